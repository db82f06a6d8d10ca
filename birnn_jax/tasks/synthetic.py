"""Synthetic tagging (the embedded default): bidirectional vs forward-only on labels that
need the right context; see `data/synthetic.py` for the generator and the ceiling.

Model: a token embedding, a BiRNN from `config.model` and a per-token softmax
(`models.Tagger`). Batches: generated from (seed, step); the test split from a stream of its
own. Metrics: token accuracy and loss (`losses`); `summarize` compares the two variants
with the left-context ceiling. No files: it predicts nothing from user input.
"""

import numpy as np

from birnn_jax.tasks import config_keys
from birnn_jax.tasks import losses
from birnn_jax.tasks import models
from birnn_jax.data.synthetic import SyntheticTagging
from birnn_jax.tasks import base
from birnn_jax.tasks import common


def generator(config) -> SyntheticTagging:
  d = config.data
  return SyntheticTagging(vocab_size=d.vocab_size, num_classes=d.num_classes,
                          num_ambiguous=d.num_ambiguous, min_length=d.min_length,
                          max_length=d.max_length)


class Task(base.Task):
  eval_splits = ("test",)

  def __init__(self, config, workdir, restore_run=None, inference=False):
    super().__init__(config, workdir, restore_run, inference)
    self.data = generator(config)
    config_keys.check_at_least(config, {"data.num_test_sequences": 1})
    # Held-out sentences come from their own stream, never from the training stream.
    test_rng = np.random.default_rng([config.seed, 1])
    self.test = self.data.batch(test_rng, config.data.num_test_sequences)

  def model(self):
    return models.Tagger(vocab_size=self.data.num_ids, embed_size=self.config.model.embed_size,
                         encoder=models.birnn_from_config(self.config.model),
                         num_tags=self.data.num_tags)

  def train_batch(self, step):
    rng = np.random.default_rng([self.config.seed, 0, step])
    return self.data.batch(rng, self.config.train.batch_size)

  def eval_batches(self, split):
    return common.fixed_batches(self.test, self.config.train.batch_size)

  def metric_sums(self, logits, batch):
    return losses.token_classification_sums(logits, batch["tags"], batch["mask"])

  def extra_results(self, params, evaluate):
    ceiling, stderr = self.data.left_context_ceiling(self.test)
    return {"left_context_ceiling": ceiling, "left_context_ceiling_stderr": stderr}

  @classmethod
  def variants(cls, config):
    return base.override_variants(config, {"bidirectional": {"bidirectional": True},
                                           "unidirectional": {"bidirectional": False}})

  @classmethod
  def summarize(cls, config, results):
    bi, uni = results["bidirectional"], results["unidirectional"]
    ceiling = bi["left_context_ceiling"]
    margin = 3 * bi["left_context_ceiling_stderr"]
    summary = {"bidirectional_accuracy": bi["test_accuracy"],
               "unidirectional_accuracy": uni["test_accuracy"],
               "left_context_ceiling": ceiling,
               "left_context_ceiling_stderr": bi["left_context_ceiling_stderr"],
               "bidirectional": bi, "unidirectional": uni}
    uni_capped = uni["test_accuracy"] <= ceiling + margin
    bi_wins = bi["test_accuracy"] >= 0.95 and bi["test_accuracy"] > ceiling + margin
    summary["verdict_pass"] = bool(uni_capped and bi_wins)
    verdict = (
        f"VERDICT: {'PASS' if summary['verdict_pass'] else 'FAIL'} - bidirectional "
        f"{bi['test_accuracy']:.2%} vs forward-only {uni['test_accuracy']:.2%}; no "
        f"left-context tagger can beat {ceiling:.2%} (+/- {margin:.2%}) on this data"
        f"{'' if uni_capped else ' (forward-only above the ceiling?!)'}"
        f"{'' if bi_wins else ' (bidirectional did not clear 95% and the ceiling)'}.")
    return summary, verdict
