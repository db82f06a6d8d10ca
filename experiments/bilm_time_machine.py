"""Contextual word vectors: an ELMo-style biLM on The Time Machine (words).

    python launch.py --config=experiments/bilm_time_machine.py --workdir=/tmp/bilm
    python launch.py --config=experiments/bilm_time_machine.py --workdir=/tmp/bilm \
        --mode=predict --text="She struck a match to light the candle | I saw a light in the window"

Pretrains a forward LM and a backward LM (forward-only 2-layer LSTM stacks, H = 64; the
backward one reads each sequence reversed within its length) with one shared embedding and
one shared softmax, on the sum of both losses (see `birnn_jax/tasks/bilm.py`). results.json
holds both held-out perplexities, a polysemy table (cosine similarities between the ELMo
vectors of `predict.word` in passages of the book that use it in two senses; the
context-free embedding gives 1.0 everywhere) and a linear probe on frozen features
(punctuation restoration) for the biLM mix vs the context-free embedding.
`--mode=predict --text="a | b | ..."` prints the table for your sentences (`--text=""`: the
built-in passages; `--config.predict.word=well` compares another word).

Measured on the shared 2-core CPU (load average ~11-13 from other jobs): 4.5-5.5 min wall
(300 steps in 230-280 s including compilation, ~80 s of CPU time); predict ~25 s.
Expected results (seed 0, reproduced exactly by two runs):
  held-out perplexity (test; 1,321 words seen >= 3 times in train, the rest read as
      <unk>, which is 16% of held-out tokens): forward 81.1, backward 79.9 (valid 75.8, 75.0)
  probe, balanced accuracy on 3,278 held-out words (chance 33.3%, stderr ~1.5%):
      biLM 64.6%, backward half 62.3%, forward half 53.5%, context-free embedding 51.6%,
      best per-word lookup table 52.5%
  'light' (noun vs verb), mean cosine: same sense 0.933, different senses 0.805 (h_0 alone
      and the context-free embedding: 1.000 and 1.000)
`:smoke` runs the same code in well under a minute of CPU time.
"""

import ml_collections

from birnn_jax.training import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = "bilm"
  c.model.cell = "lstm"
  c.model.hidden_size = 64
  c.model.embed_size = 64       # must equal hidden_size: h_0 = [e; e] is 2H wide
  c.model.num_layers = 2        # per direction
  c.model.bidirectional = False  # each LM is a forward-only stack (required)
  c.model.dropout = 0.2         # embeddings, between layers, before the softmax
  c.model.residual = True       # ELMo's residual connection from the second layer on
  c.model.mix_weights = ()      # fixed layer-mix logits w (s = softmax(w)); () = equal
  c.model.mix_gamma = 1.0       # ELMo's gamma

  # 'time_machine': the book; 'treebank': a UD treebank's own word forms (data.dir, '' = the
  # bundled English-EWT; its train/dev/test as train/valid/test), see `:treebank` below.
  c.data.corpus = "time_machine"
  c.data.level = "word"
  c.data.seq_len = 32           # window length T; each LM predicts T - 1 tokens per window
  c.data.train_stride = 1       # training windows start at every token
  c.data.min_freq = 3           # rarer train words read as <unk>

  c.probe = ml_collections.ConfigDict()
  c.probe.ridge = 10.0          # ridge penalty of the linear probe (closed form)
  c.probe.train_tokens = 0      # fit on the train split's last N tokens; 0 = all of it

  c.predict = ml_collections.ConfigDict()
  c.predict.word = "light"      # the word the polysemy demo compares (built in: light, well)
  c.predict.text = ""           # '|'-separated sentences for the results demo; '' = built-in

  c.optim.learning_rate = 5e-3
  c.optim.schedule = "cosine"
  c.train.num_steps = 300
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.best_metric = "eval_loss"
  c.train.best_mode = "min"
  args = set(arg.split(",")) if arg else set()
  if args - {"smoke", "treebank"}:
    raise ValueError(f"experiments/bilm_time_machine.py: unknown config arg {arg!r}; "
                     "expected nothing, 'smoke', 'treebank' or 'treebank,smoke'.")
  if "treebank" in args:
    # A biLM on the POS tagger's own training text (no outside data), for its features:
    # EWT's 12,544 training sentences are 6x the book's words, so 3x the steps.
    c.data.corpus = "treebank"
    c.train.num_steps = 900
    c.train.log_every = 100
    c.train.eval_every = 300
    c.train.checkpoint_every = 300
  if "smoke" in args:
    c.smoke = True
    c.model.hidden_size = 16
    c.model.embed_size = 16
    c.data.seq_len = 12
    c.probe.train_tokens = 2000
    c.train.num_steps = 10
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  return c

