"""The word-and-character input machinery of the word taggers (POS, NER), one room each
task imports (a task never imports another):

- `text`: a user's plain text -> words (`tokenize`);
- `chars`: a word's character ids and the batch's deduplicated character table in tiers;
- `word_dropout`: rare-word dropout in the batches, `WordDropout` in the model;
- `model`: the word + character tagger (`WordCharTagger`) and its config checks;
- `task`: the shared task base (`WordCharTask`): vocabularies, examples, batches, and
  prediction batched by length.
"""

from birnn_jax.tasks.wordchar.chars import (CHAR_TIERS, CharEncoder, char_table, dedup_chars,
                                            dedup_common,
                                            map_char_rows, unique_rows)
from birnn_jax.tasks.wordchar.model import (WordCharTagger, check_encoder_config,
                                            model_from_config)
from birnn_jax.tasks.wordchar.task import CHAR_VOCAB_FILE, WORD_VOCAB_FILE, WordCharTask
from birnn_jax.tasks.wordchar.text import tokenize
from birnn_jax.tasks.wordchar.word_dropout import WordDropout, drop_words, rare_word_drop_probs

__all__ = ["CHAR_TIERS", "CharEncoder", "char_table", "dedup_chars", "dedup_common",
           "map_char_rows", "unique_rows", "WordCharTagger", "check_encoder_config", "model_from_config",
           "CHAR_VOCAB_FILE", "WORD_VOCAB_FILE", "WordCharTask", "tokenize", "WordDropout",
           "drop_words", "rare_word_drop_probs"]
