"""POS tagging (UPOS) on UD English-EWT: word + character BiLSTM tagger.

    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos
    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos --mode=predict \
        --text="I saw her duck under the table."
    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos_fwd \
        --config.model.bidirectional=False          # the forward-only baseline

Does biLM pretraining help? (ELMo features from experiments/bilm_time_machine.py; the
three variants no_bilm / context_free / elmo on the first 1,000 training sentences):

    python launch.py --config=experiments/bilm_time_machine.py --workdir=/tmp/bilm
    python launch.py --config=experiments/pos_ewt.py:bilm --workdir=/tmp/pos_bilm \
        --config.model.bilm_workdir=/tmp/bilm

Gold tokenisation, no pretrained embeddings (by default). results.json: dev_accuracy, test_accuracy,
test_per_tag_accuracy, test_unseen_accuracy (see birnn_jax/tasks/pos.py).
`:smoke` runs the same code on the real files with a tiny model in seconds.

Any UD treebank (15 epochs whatever its size; no dev file = 10% of train held out):

    python launch.py --config=experiments/pos_ewt.py --workdir=/tmp/pos_el \
        --config.data.dir=/path/to/UD_Greek-GDT

Expected over 5 seeds (`--config.train.num_seeds=5`, 84 min on a 2-core CPU; one seed ~22
min): dev 95.50% +/- 0.09, test 95.77% +/- 0.08 (the ensemble of the five 96.03%), unseen
test words 81.5% +/- 0.7. At the earlier 10 epochs without averaging
(`--config.train.num_epochs=10 --config.train.ema_decay=0.0`), seed 0: dev 95.41%, test
95.57%; forward-only: dev 92.73%, test 93.05%. `:bilm` (1,000 sentences): test 88.81% without the
biLM, 89.71% with its context-free embedding, 89.95% with its ELMo mix.
"""

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "pos"
  c.model.cell = "lstm"
  c.model.hidden_size = 128
  c.model.num_layers = 2
  c.model.dropout = 0.33            # between the two sentence-level layers
  c.model.impl = "fused"
  c.model.embed_size = 100          # word embedding (lowercased words)
  c.model.char_embed_size = 50
  c.model.char_hidden_size = 100    # per direction; the character vector has 200 features
  c.model.word_dropout = 0.1        # any word id -> UNK during training, in the model
  c.model.embed_dropout = 0.33
  c.model.output_dropout = 0.33
  # Rei (2017)'s auxiliary objective (birnn_jax/tasks/neighbour_lm.py): the first layer's
  # forward chain predicts the next word, its backward chain the previous one; 0 = off.
  c.model.neighbour_lm_weight = 0.0
  c.model.neighbour_lm_vocab = 7500   # the most frequent words predicted, the rest as UNK
  c.model.neighbour_lm_hidden = 50    # the tanh layer before each softmax
  c.model.bilm_workdir = ""         # a trained bilm_time_machine run: ELMo features; '' = none
  c.model.bilm_layers = "all"       # 'all': ELMo's learned mix of h_0..h_L; 'context_free': h_0
  c.compare_bilm = False            # train no_bilm / context_free / elmo variants and compare
  c.compare_directions = False      # train bidirectional / forward variants and compare

  # Which treebank: '' = the bundled UD English-EWT. data.dir may be any UD treebank folder
  # (*-ud-{train,dev,test}.conllu, plain or .xz); or name the three files.
  c.data.train_file = ""
  c.data.dev_file = ""              # '' with no dev file in the folder: hold out dev_fraction
  c.data.test_file = ""
  c.data.dev_fraction = 0.1         # of train, seeded, when the treebank has no dev file
  c.data.max_length = 256           # longer train sentences left out, counted (EWT max: 159)
  c.data.min_freq = 1
  c.data.train_sentences = 0        # keep the first N training sentences; 0 = all 12,544
  c.data.word_dropout_alpha = 1.0   # a word seen c times in train -> UNK w.p. 1 / (1 + c)
  c.data.lowercase = True
  c.data.max_chars = 16             # longer words keep their first 8 + last 8 characters
  c.data.pad_to = 16
  c.data.eval_batch_size = 128

  c.optim.name = "adam"
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 5.0

  # In epochs, so any treebank gets the same number of passes (EWT: 392 steps per epoch).
  # 15 epochs, evaluated with the weights' moving average: chosen on dev over 5 seeds, +0.26
  # [0.17, 0.35] against 10 epochs without it (docs/experiments/pos.md, "Towards 96%").
  c.train.batch_size = 32
  c.train.num_epochs = 15
  c.train.ema_decay = 0.999
  c.train.log_every_epochs = 0.25
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every_epochs = 1
  c.train.best_metric = "eval_accuracy"
  c.train.best_mode = "max"
  args = set(arg.split(",")) if arg else set()
  if args - {"smoke", "bilm"}:
    raise ValueError(f"experiments/pos_ewt.py: unknown config arg {arg!r}; expected "
                     "nothing, 'smoke', 'bilm' or 'bilm,smoke'.")
  if "bilm" in args:
    # Low resource, where pretraining matters most: 1,000 sentences (8% of train), a smaller
    # tagger, 30 epochs of 32 steps; every variant is evaluated on the full dev and test.
    c.compare_bilm = True
    c.data.train_sentences = 1000
    c.model.hidden_size = 64
    c.model.num_layers = 1
    c.model.embed_size = 64
    c.model.char_embed_size = 32
    c.model.char_hidden_size = 32
    c.train.num_epochs = 30         # 32 steps per epoch
    c.train.ema_decay = 0.0         # as the comparison below was measured
    c.train.log_every_epochs = 2
    c.train.eval_every_epochs = 5
    c.train.checkpoint_every_epochs = 5
  if "smoke" in args:
    c.model.hidden_size = 16
    c.model.embed_size = 16
    c.model.char_embed_size = 8
    c.model.char_hidden_size = 8
    c.model.impl = "scan"
    c.data.max_chars = 8
    c.data.pad_to = 160               # one padded length (T = 160) for every batch: few compiles
    c.data.eval_batch_size = 512
    c.train.batch_size = 16
    c.train.num_epochs = 0            # a few steps, whatever the treebank
    c.train.log_every_epochs = 0
    c.train.eval_every_epochs = 0
    c.train.checkpoint_every_epochs = 0
    c.train.num_steps = 12
    c.train.ema_decay = 0.0           # an average of 12 steps would be the initial weights
    c.train.log_every = 4
    c.train.eval_every = 12
    c.train.checkpoint_every = 12
    c.smoke = True
  return c
