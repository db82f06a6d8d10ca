"""Frozen biLM features for another task (ELMo's use: the POS tagger's extra inputs).

A trained biLM is restored from its workdir by the `restore_run` function the runner hands to
tasks (`training.trained.restore_run`): tasks never import the runner.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from birnn_jax.data import text as text_lib
from birnn_jax.data.vocab import PAD
from birnn_jax.tasks.bilm import task as task_lib


book_token = task_lib.book_token


class FrozenFeatures:
  """Per-token biLM layer states h_0..h_L for the tokens of another corpus, e.g. EWT.

  Each sentence is read the way the book was: every token becomes its letters, lowercased
  (`book_token`); tokens without letters (punctuation, numbers), which the book's
  preprocessing deletes, are left out of the biLM's input and get zero vectors; words not in
  the biLM's vocabulary read as <unk>. The biLM is frozen: its params are constants here.

      features = FrozenFeatures.from_workdir("/tmp/bilm", trained.restore_run)
      encoded = [features.encode(forms) for forms in sentences]
      x = features(encoded, batch_size=32, num_steps=48)   # [32, 48, L + 1, 2H]
  """

  def __init__(self, task: task_lib.Task, params):
    self.task, self.params = task, params
    model = task.model()

    def gather(params, tokens, lengths, positions):
      states = model.apply({"params": params}, tokens, lengths, method="layer_states")
      states = jnp.moveaxis(states, 0, 2)                      # [B, T', L + 1, 2H]
      picked = jnp.take_along_axis(states, jnp.maximum(positions, 0)[:, :, None, None], 1)
      return jnp.where((positions >= 0)[:, :, None, None], picked, 0.0)

    self._gather = jax.jit(gather)

  @classmethod
  def from_workdir(cls, workdir, restore_run) -> "FrozenFeatures":
    """The features of the trained biLM run in `workdir`; `restore_run(workdir, task)` ->
    (task, params) reads it (the runner's `training.trained.restore_run`)."""
    return cls(*restore_run(workdir, task="bilm"))

  def encode(self, forms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [n'], the biLM's input, and positions int32 [len(forms)]: each form's
    index into ids, -1 for a form with no letters)."""
    tokens = [book_token(f) for f in forms]
    has_letters = np.array([bool(t) for t in tokens], bool)
    positions = np.where(has_letters, np.cumsum(has_letters) - 1, -1).astype(np.int32)
    return text_lib.encode([t for t in tokens if t], self.task.vocab), positions

  def __call__(self, encoded: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int,
               num_steps: int, pad_to: int = 16) -> np.ndarray:
    """float32 [batch_size, num_steps, L + 1, 2H] for the rows `encoded` (then zero rows).
    The biLM's input is padded to a multiple of `pad_to` so jit sees few shapes."""
    longest = max([len(ids) for ids, _ in encoded] + [1])
    tokens = np.full((batch_size, -(-longest // pad_to) * pad_to), PAD, np.int32)
    lengths = np.zeros(batch_size, np.int32)
    positions = np.full((batch_size, num_steps), -1, np.int32)
    for row, (ids, pos) in enumerate(encoded):
      tokens[row, :len(ids)], lengths[row] = ids, len(ids)
      positions[row, :len(pos)] = pos
    return np.asarray(self._gather(self.params, tokens, lengths, positions))
