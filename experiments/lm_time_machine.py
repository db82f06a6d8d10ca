"""Language modelling on The Time Machine, right (forward) and wrong (bidirectional).

    python launch.py --config=experiments/lm_time_machine.py --workdir=/tmp/lm_time_machine
    python launch.py --config=experiments/lm_time_machine.py --workdir=/tmp/lm_time_machine \
        --mode=predict --prefix="time traveller"

Trains two character-level LSTM LMs on the same windows: 'forward' (H_t reads x_<=t) and
'bidirectional' (a BiRNN over the whole window trained to predict x_{t+1}; its backward
direction has read x_{t+1}, so it learns to copy it). results.json has, for each:
`train_perplexity` (512 training windows), `heldout_perplexity` (test split, whole window
visible), `future_hidden_perplexity` (every test position t scored from x_<=t alone,
lengths = t + 1: 8671 positions), a `sample` continuing "time traveller" (temperature 0.5,
seed 0; generation only reads the past) and `sample_word_rate` (the share of a 500-character
sample's words that are words of the book). Character level as in d2l ch. 9: 31 ids, a cheap
softmax, readable samples, and copying is one character away. The BiRNN's perplexity is ~1
rather than 1 because each window's last target lies outside the window.

Measured on the 2-core CPU while other jobs shared it: 5 min 55 s wall, 4 min 45 s CPU time
(training 125 s forward + 198 s bidirectional). Expected (deterministic for seed 0):
  forward:       train 3.58, held-out 4.43, future hidden 4.43 (= held-out: it is causal),
                 95% real words, "time traveller at the more then i took the machine with a
                 little hands were the scontion of my mind of the glinx o"
  bidirectional: train 1.05, held-out 1.05, future hidden 5.90, 76% real words,
                 "time traveller to my recoin the sain they was the sowe the was she the mete
                 the the rassen but and sowered intery"
  VERDICT PASS.
`:smoke` runs the same code in seconds (tiny model, 10 steps; its numbers mean nothing).
"""

import ml_collections

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "lm"
  c.model.cell = "lstm"
  c.model.impl = "fused"       # both directions in one scan (same numbers, faster on CPU)
  c.model.hidden_size = 128
  c.model.embed_size = 32
  c.model.embed_dropout = 0.0   # dropout on embedding features while training

  c.data.level = "char"        # 'char' | 'word'
  c.data.min_freq = 1          # rarer training tokens become <unk>
  c.data.seq_len = 32          # T: each training window predicts T next tokens
  c.data.stride = 1            # offset between training windows (1 = every position)
  c.data.train_eval_windows = 512    # training windows scored for train_perplexity
  c.data.future_hidden_rows = 0      # test positions scored with the future hidden; 0 = all

  c.predict = ml_collections.ConfigDict()
  c.predict.prefix = "time traveller"   # the prompt of the sample in results.json
  c.predict.num_tokens = 100            # tokens generated after the prefix
  c.predict.temperature = 0.5           # 0 = greedy; > 0 samples softmax(logits / T)
  c.predict.seed = 0
  c.predict.word_rate_tokens = 500      # length of the sample whose real-word rate is reported

  c.optim.learning_rate = 3e-3
  c.train.num_steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.best_metric = "eval_loss"
  c.train.best_mode = "min"
  if arg == "smoke":
    c.smoke = True
    c.model.hidden_size = 16
    c.model.embed_size = 8
    c.data.seq_len = 8
    c.data.train_eval_windows = 16
    c.data.future_hidden_rows = 64
    c.predict.num_tokens = 10
    c.predict.word_rate_tokens = 20
    c.train.num_steps = 10
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  elif arg:
    raise ValueError(f"experiments/lm_time_machine.py: unknown config arg {arg!r}; "
                     "expected nothing or 'smoke'.")
  return c
