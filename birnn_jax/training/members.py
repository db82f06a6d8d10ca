"""Members: N models of one experiment, seeds `seed … seed + N − 1`, in one program (design.md
§9), the pieces a multi-member run is built from.

Member k is the one-seed run of seed `seed + k`, exactly: its own initialisation, dropout
RNG and data order, each from the same functions of (seed, step) as a one-seed run's. So
the member axis is only a leading axis stacked onto what one-seed runs already compute:

- `member_configs`: one config per member, the seed its only difference;
- `stack` / `unstack`: host or device trees with a leading member axis, and back;
- `member_steps`: the train step vmapped over (state, batch, rng) and the eval step over
  the parameters (every member reads the same evaluation batch): one compiled program for
  all members, whatever N.

Not yet wired into `trainer.Trainer` (issue #32 goes on): tests/test_members.py checks that
N vmapped members equal N one-seed runs, step for step, on two tasks.
"""

from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np


def member_seeds(seed: int, num_members: int) -> list[int]:
  """`seed … seed + num_members − 1`: member k's seed."""
  if num_members < 1:
    raise ValueError(f"num_members={num_members}: expected at least 1.")
  return [seed + k for k in range(num_members)]


def member_configs(config: ml_collections.ConfigDict, num_members: int
                   ) -> list[ml_collections.ConfigDict]:
  """A copy of `config` per member, with member k's seed (nothing else differs)."""
  out = []
  for seed in member_seeds(config.seed, num_members):
    member = config.copy_and_resolve_references()
    member.seed = seed
    out.append(member)
  return out


def stack(trees: Sequence):
  """Trees of one structure -> one tree whose leaves gain a leading member axis [N, ...]
  (numpy leaves stay on the host, arrays and PRNG keys stay arrays)."""
  def stacked(*leaves):
    if isinstance(leaves[0], np.ndarray):
      return np.stack(leaves)
    return jax.numpy.stack(leaves)
  return jax.tree.map(stacked, *trees)


def unstack(tree, num_members: int) -> list:
  """The inverse of `stack`: member k's tree (leaf[k] of every leaf)."""
  return [jax.tree.map(lambda leaf, k=k: leaf[k], tree) for k in range(num_members)]


def member_steps(train_step: Callable, eval_step: Callable) -> tuple[Callable, Callable]:
  """`steps.make_steps`'s two steps over a leading member axis.

  Returns:
    `train_step(state [N, ...], batch [N, B, ...], rng [N]) -> (state, metrics [N, ...])`
    and `eval_step(params [N, ...], batch [B, ...]) -> (sums [N], ids [N, B, ...])`.
  """
  return jax.vmap(train_step), jax.vmap(eval_step, in_axes=(0, None))
