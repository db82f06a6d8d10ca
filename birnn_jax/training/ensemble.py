"""Seed ensembles: the N members of a run (`train.num_seeds`) as one model (docs/seeds.md).

The ensemble predicts what its members predict, combined by the task
(`Task.ensemble_outputs`): the mean of the members' probabilities for a softmax output;
for NER's CRF the mean of their emission, transition, start and end scores, decoded by the
constrained Viterbi (one best path of the averaged scores, never a vote over paths). To
everything downstream it is one model, `Ensemble.apply({"params": stacked}, *inputs)`
with the members' parameters stacked [N, ...] as the checkpoint holds them, so predicting,
evaluating and exporting an ensemble run the one-model code.
"""

import jax

from birnn_jax.tasks import wordchar

NAME = "ensemble"   # what `member=` (and --member) takes for it


class Ensemble:
  """N members of `model` as one model (the same `apply` contract, for predicting only).

  `apply({"params": params [N, ...]}, *inputs, deterministic=True)` runs every member on
  the same inputs (one vmapped program) and returns `combine(outputs [N, ...], inputs)`.
  """

  def __init__(self, model, combine):
    self.model, self.combine = model, combine

  def apply(self, variables, *inputs, deterministic: bool = True, **kwargs):
    if not deterministic:
      raise ValueError("an ensemble only predicts (deterministic=True); its members train.")

    def member(params):
      return self.model.apply({"params": params}, *inputs, deterministic=True, **kwargs)

    return self.combine(jax.vmap(member)(variables["params"]), inputs)


def supports(task) -> bool:
  """Whether `task`'s members predict as an ensemble: the word taggers (POS, NER), whose
  predictions are labels per token."""
  return isinstance(task, wordchar.WordCharTask)


def of_task(task) -> Ensemble:
  """The ensemble of `task`'s model (`task.ensemble_outputs` combines the members)."""
  return Ensemble(task.model(), task.ensemble_outputs)


def use_ensemble(task):
  """`task`, predicting from now on with the ensemble of its members (`of_task`): its
  prediction functions take the members' parameters stacked [N, ...]."""
  task.use_model(of_task(task))
  return task


def same_for_members(batches) -> bool:
  """Whether member-stacked batches [N, ...] hold the same data for every member, as an
  ensemble needs (a held-out set drawn by seed differs per member)."""
  return all((leaf == leaf[:1]).all() for batch in batches
             for leaf in jax.tree.leaves(batch))
