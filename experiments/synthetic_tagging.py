"""Synthetic tagging: why the backward direction matters (the README's first command).

    python launch.py --config=experiments/synthetic_tagging.py

Trains a forward-only LSTM tagger and a bidirectional one on the same generated data (an
ambiguous word's tag is decided by the next word) and reports both next to the best accuracy
any left-context tagger can reach. About a minute on a 2-core CPU; expected: bidirectional
~100%, forward-only at the ceiling (~84%), a PASS verdict.
`:smoke` runs the same code in seconds.
"""

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "synthetic"
  c.model.cell = "lstm"
  c.model.hidden_size = 32
  c.model.embed_size = 16
  c.data.vocab_size = 24
  c.data.num_classes = 3
  c.data.num_ambiguous = 6
  c.data.min_length = 6
  c.data.max_length = 20
  c.data.num_test_sequences = 1000
  c.optim.learning_rate = 1e-2
  c.train.num_steps = 300
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.best_metric = "eval_accuracy"
  c.train.best_mode = "max"
  if arg == "smoke":
    c.smoke = True
    c.model.hidden_size = 8
    c.model.embed_size = 8
    c.data.num_test_sequences = 32
    c.train.num_steps = 20
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  elif arg:
    raise ValueError(f"experiments/synthetic_tagging.py: unknown config arg {arg!r}; "
                     "expected nothing or 'smoke'.")
  return c
