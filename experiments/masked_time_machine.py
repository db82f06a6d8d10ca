"""Fill in the blank on The Time Machine: bidirectional vs forward-only vs backward-only.

    python launch.py --config=experiments/masked_time_machine.py \
        --workdir=/tmp/masked_time_machine
    python launch.py --config=experiments/masked_time_machine.py \
        --workdir=/tmp/masked_time_machine --mode=predict --text="i am ___ hungry"

Trains one LSTM masked-token model (embedding, encoder, per-token softmax) three ways on the
same windows and scores all three on the same fixed held-out blanks (10 maskings of the test
text, 2330 blanks): 'bidirectional', 'forward' (reads the blank and its left) and 'backward'
(the blank and its right). results.json: `masked_accuracy` and `perplexity` of each.

Word level, because a blank is then a word: "i am ___ hungry" asks for a word, whereas at
character level it asks for one letter and most blanks are spelling ("th_" -> e). The
softmax head runs only at the target positions, so a word-level step costs about what a
character-level one does, and 1500 steps give a clear verdict. The book is small (29k
training words), so dropout on the embeddings and on H_t keeps the models from memorising it.

Measured on the 2-core CPU while other jobs shared it (load average 5-9): 13 min 53 s wall,
9 min 44 s CPU time for all three variants (training 376 s + 259 s + 176 s); on an idle
machine it is under 10 minutes. Expected (deterministic for seed 0), test split:
  bidirectional 20.3% masked accuracy (perplexity 120), forward 13.7% (211),
  backward 15.0% (221): VERDICT PASS, +5.3 points over the best one-directional model
  (3 conservative standard errors: 4.6 points).
predict: "i am ___ hungry" -> not 5.6%, seen 3.7%, been 2.6%, ...; "the time ___ was
expounding a recondite matter to us" -> traveller 42.8%, machine 17.9%, i 16.5%, ...
`:smoke` runs the same code in seconds (tiny model, 6 steps; its numbers mean nothing).
"""

import ml_collections

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "masked_lm"
  c.model.cell = "lstm"
  c.model.impl = "fused"        # both directions in one scan (same numbers, faster on CPU)
  c.model.hidden_size = 128
  c.model.embed_size = 64
  c.model.embed_dropout = 0.3   # dropout on embedding features while training
  c.model.output_dropout = 0.5  # dropout on H_t before the softmax head while training
  c.model.reverse = False       # backward-only: run the forward stack on reversed sequences
                                # (set by the 'backward' variant; needs bidirectional=False)

  c.data.level = "word"         # 'word' | 'char'
  c.data.min_freq = 1           # rarer training tokens become <unk> (never a target)
  c.data.seq_len = 32           # T: training windows and held-out rows
  c.data.min_length = 32        # training rows get lengths uniform in [min_length, seq_len]
  c.data.stride = 1             # offset between training windows (1 = every position)
  c.data.mask_rate = 0.15       # fraction of each row's tokens chosen as targets
  c.data.mask_probs = (0.8, 0.1, 0.1)   # training targets: [MASK] / random / unchanged
  c.data.eval_copies = 10       # held-out maskings (fixed masks, every target [MASK])

  c.predict = ml_collections.ConfigDict()
  c.predict.top_k = 5           # fillers listed per blank

  c.optim.learning_rate = 3e-3
  c.optim.schedule = "cosine"
  c.train.num_steps = 1500
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.best_metric = "eval_masked_accuracy"
  c.train.best_mode = "max"
  if arg == "smoke":
    c.smoke = True
    c.model.hidden_size = 16
    c.model.embed_size = 8
    c.data.min_freq = 3
    c.data.seq_len = 8
    c.data.min_length = 3
    c.data.eval_copies = 1
    c.train.num_steps = 6
    c.train.batch_size = 16
    c.train.log_every = 3
    c.train.eval_every = 6
    c.train.checkpoint_every = 6
  elif arg:
    raise ValueError(f"experiments/masked_time_machine.py: unknown config arg {arg!r}; "
                     "expected nothing or 'smoke'.")
  return c
