"""Named-entity recognition on UNER Danish-DDT: BiLSTM-CRF vs softmax vs forward-only CRF.

    python launch.py --config=experiments/ner_uner.py --workdir=/tmp/ner
    python launch.py --config=experiments/ner_uner.py --workdir=/tmp/ner --mode=predict \
        --text="Anders Fogh Rasmussen mødte Mette Frederiksen i København hos Novo Nordisk."

Trains three taggers on the same data, each in its own sub-workdir: `crf` (bidirectional
LSTM + CRF), `softmax` (bidirectional LSTM + per-token softmax) and `crf_forward`
(forward-only LSTM + CRF); `--config.compare_variants=False` trains one model as configured
(`model.head`, `model.bidirectional`). The encoder is the POS tagger's (words + character
BiLSTM -> 2-layer BiLSTM), with no pretrained embeddings. Entity-level F1 by seqeval
(conlleval mode, strict IOB2 alongside), per type; constrained Viterbi for the CRF; the
softmax head's rate of invalid IOB2 sequences. See birnn_jax/tasks/ner.py.

`--config.data.dir` takes any folder of UNER files (*-train.iob2, *-dev.iob2, *-test.iob2,
plain or .xz), e.g. another UNER language. Unset, the bundled UNER Danish-DDT is read.
`:smoke` runs the same code (all three variants) on the real files with a tiny model.

Chosen on dev F1 of the `crf` variant, never on test, by the sweep `get_hyper` below
(hidden size x batch size x epochs x dropout, one seed each; `--sweep`, then
`--mode=report`): its report, and the hand search before it (casing, BIOES labels,
learning rate, weight averaging, character sizes), are in docs/experiments/ner.md.

Expected for `crf` over 5 seeds (`--config.compare_variants=False --config.train.num_seeds=5`,
35 min): dev F1 72.6 +/- 0.9, test 70.6 +/- 1.1 (the ensemble of the five 72.2). At the
earlier 12 epochs without averaging (`--config.train.num_epochs=12
--config.train.ema_decay=0.0`), seed 0, ~28 min for the three on a shared 2-core CPU: test
entity F1 69.7 (dev 73.8, strict 69.8) for `crf`, 67.0 for `softmax` (2.1% of its test
sentences invalid IOB2), 61.6 for `crf_forward`; 0 invalid sequences from constrained
Viterbi.
"""

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "ner"
  c.compare_variants = True         # train crf / softmax / crf_forward and compare them
  c.model.head = "crf"              # crf | softmax (one model: compare_variants=False)
  c.model.tag_scheme = "iob2"       # the labels the model predicts: iob2 | iobes (BIOES)
  c.model.cell = "lstm"
  # Lample et al. (2016)-sized: 100 per direction over the sentence, 25-d characters with 50
  # per direction; these, the dropouts, the casing embedding, the batch size and the epochs
  # were chosen on dev, never on test.
  c.model.hidden_size = 100
  c.model.num_layers = 2
  c.model.dropout = 0.33            # between the two sentence-level layers
  c.model.impl = "fused"
  c.model.embed_size = 100          # word embedding (lowercased words)
  c.model.char_embed_size = 25
  c.model.char_hidden_size = 50     # per direction; case is kept in the characters
  c.model.casing_embed_size = 16    # each word's casing class (ner.CASINGS); 0 = none
  c.model.word_dropout = 0.1
  c.model.embed_dropout = 0.5
  c.model.output_dropout = 0.5
  # Rei (2017)'s auxiliary objective (birnn_jax/tasks/neighbour_lm.py): the first layer's
  # forward chain predicts the next word, its backward chain the previous one; 0 = off.
  c.model.neighbour_lm_weight = 0.0
  c.model.neighbour_lm_vocab = 7500   # the most frequent words predicted, the rest as UNK
  c.model.neighbour_lm_hidden = 50    # the tanh layer before each softmax

  c.data.max_length = 256           # longer train sentences left out, counted (DDT max: 91)
  c.data.min_freq = 1
  c.data.word_dropout_alpha = 1.0   # a word seen c times in train -> UNK w.p. 1 / (1 + c)
  c.data.lowercase = True
  c.data.max_chars = 16
  c.data.pad_to = 16
  c.data.eval_batch_size = 128

  c.optim.name = "adam"
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 5.0

  # In epochs, so the config serves a UNER corpus of any size (Danish-DDT: 274 steps each).
  # 18 epochs, evaluated with the weights' moving average: chosen on dev over 5 seeds, +1.34
  # [0.48, 2.20] against 12 epochs without it (docs/experiments/ner.md, "Towards 75").
  c.train.batch_size = 16
  c.train.num_epochs = 18.0
  c.train.ema_decay = 0.999
  c.train.log_every_epochs = 0.5
  c.train.eval_every_epochs = 1.0
  c.train.checkpoint_every_epochs = 1.0
  c.train.best_metric = "eval_f1"
  c.train.best_mode = "max"
  if arg == "smoke":
    c.smoke = True
    c.model.hidden_size = 16
    c.model.embed_size = 16
    c.model.char_embed_size = 8
    c.model.char_hidden_size = 8
    c.data.max_chars = 8
    c.data.pad_to = 96                # one padded length (T = 96) for every batch: few compiles
    c.data.eval_batch_size = 600
    c.train.num_epochs = 0.0          # a few steps, not epochs
    c.train.log_every_epochs = c.train.eval_every_epochs = 0.0
    c.train.checkpoint_every_epochs = 0.0
    c.train.num_steps = 8
    c.train.ema_decay = 0.0           # an average of 8 steps would be the initial weights
    c.train.log_every = 4
    c.train.eval_every = 8
    c.train.checkpoint_every = 8
  elif arg:
    raise ValueError(f"experiments/ner_uner.py: unknown config arg {arg!r}; expected "
                     "nothing or 'smoke'.")
  return c


def get_hyper(h):
  """The search of the docstring as a sweep of the `crf` model, one seed each, chosen on dev
  F1 (docs/experiments/ner.md has its report):
  `python launch.py --config=experiments/ner_uner.py --sweep --workdir=runs/ner_sweep`,
  then `--mode=report --workdir=runs/ner_sweep`. 16 settings (`--dry_run` lists them),
  about an hour on this project's 2-core CPU; `--config.train.num_seeds=5` gives each five
  seeds."""
  return h.product([
      h.sweep("compare_variants", [False]),
      h.sweep("train.ema_decay", [0.0]),   # as the search was run, before the average
      h.sweep("model.hidden_size", [100, 150]),
      h.sweep("train.batch_size", [16, 32]),
      h.sweep("train.num_epochs", [8.0, 12.0]),
      h.zip([h.sweep("model.embed_dropout", [0.33, 0.5]),
             h.sweep("model.output_dropout", [0.33, 0.5])]),
  ])
