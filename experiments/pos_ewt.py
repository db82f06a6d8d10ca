"""POS tagging (UPOS) on UD English-EWT: word + character BiLSTM tagger.

    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos
    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos --mode=predict \
        --text="I saw her duck under the table."
    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos_fwd \
        --config.model.bidirectional=False          # the forward-only baseline

Gold tokenisation, no pretrained embeddings. results.json: dev_accuracy, test_accuracy,
test_per_tag_accuracy, test_unseen_accuracy (see birnn_jax/tasks/pos.py).
`:smoke` runs the same code on the real files with a tiny model in seconds.
"""

from birnn_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "pos"
  c.model.cell = "lstm"
  c.model.hidden_size = 128
  c.model.num_layers = 2
  c.model.dropout = 0.33            # between the two sentence-level layers
  c.model.impl = "fused"
  c.model.embed_size = 100          # word embedding (lowercased words)
  c.model.char_embed_size = 32
  c.model.char_hidden_size = 64     # per direction; the character vector has 128 features
  c.model.word_dropout = 0.1        # any word id -> UNK during training, in the model
  c.model.embed_dropout = 0.33
  c.model.output_dropout = 0.33

  c.data.max_length = 256           # a guard: the longest EWT sentence has 159 words
  c.data.min_freq = 1
  c.data.word_dropout_alpha = 1.0   # a word seen c times in train -> UNK w.p. 1 / (1 + c)
  c.data.lowercase = True
  c.data.max_chars = 16             # longer words keep their first 8 + last 8 characters
  c.data.pad_to = 16
  c.data.eval_batch_size = 128

  c.optim.name = "adam"
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 5.0

  epoch = 392                       # steps: ceil(12,544 training sentences / 32)
  c.train.batch_size = 32
  c.train.num_steps = 10 * epoch
  c.train.log_every = epoch // 4
  c.train.eval_every = epoch
  c.train.checkpoint_every = epoch
  c.train.best_metric = "eval_accuracy"
  c.train.best_mode = "max"
  if arg == "smoke":
    c.model.hidden_size = 16
    c.model.embed_size = 16
    c.model.char_embed_size = 8
    c.model.char_hidden_size = 8
    c.model.impl = "scan"
    c.data.max_chars = 8
    c.data.pad_to = 160               # one padded length (T = 160) for every batch: few compiles
    c.data.eval_batch_size = 512
    c.train.batch_size = 16
    c.train.num_steps = 12
    c.train.log_every = 4
    c.train.eval_every = 12
    c.train.checkpoint_every = 12
  elif arg:
    raise ValueError(f"experiments/pos_ewt.py: unknown config arg {arg!r}; "
                     "expected nothing or 'smoke'.")
  return c
