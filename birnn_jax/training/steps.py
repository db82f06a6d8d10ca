"""The train and eval steps: pure functions of arrays that the trainer jits.

`make_steps(task, model, tx, ...)` gives `train_step(state, batch, rng) -> (state,
metrics)` and `eval_step(params, batch) -> (metric sums, predicted ids)`; the task supplies
the model's inputs and its metric sums (`tasks/base.py`). A model may add auxiliary
objectives in training by sowing token sums into its 'losses' collection (added to the
loss) and 'metrics' (logged only), e.g. `tasks.neighbour_lm`. The state is a plain dict
`{"step", "params", "opt_state"[, "ema_params"]}` that orbax saves.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from birnn_jax import errors
from birnn_jax.training import optim


def ema_decay_at(decay: float, step):
  """The averaging weight of the old average at update `step` (1-based): `decay`, but
  smaller early on, (1 + step) / (10 + step), so the average soon forgets the random
  initialisation (TensorFlow's ExponentialMovingAverage with num_updates)."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


# The collections a model sows training-only token sums into (`with_sown`).
SOWN = ("losses", "metrics")


def with_sown(sums: dict, sown) -> dict:
  """The task's metric sums plus what the model sowed: every 'losses' value added to the
  loss, and each sown value (by its name, summed over modules) as a metric of its own."""
  sums = dict(sums)
  for collection in SOWN:
    for path, value in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(sown.get(collection, {}))).items():
      total = sum(value) if isinstance(value, tuple) else value
      if collection == "losses":
        sums["loss"] = sums["loss"] + total
      sums[path[-1]] = sums.get(path[-1], 0.0) + total
  return sums


def make_steps(task, model, tx, nan_policy: str, ema_decay: float = 0.0):
  """(train_step, eval_step), pure functions of arrays. With `ema_decay` > 0 the state also
  holds `ema_params`, an exponential moving average of the parameters after each update
  (Polyak averaging; weight `ema_decay_at`), which evaluation reads instead."""

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      outputs, sown = model.apply({"params": params}, *task.model_inputs(batch),
                                  deterministic=False, rngs={"dropout": rng}, mutable=SOWN)
      sums = with_sown(task.metric_sums(outputs, batch), sown)
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optim.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Finite loss and gradients can still give overflowing parameters (a huge learning rate).
    params_finite = jax.tree.reduce(
        jnp.logical_and, jax.tree.map(lambda p: jnp.all(jnp.isfinite(p)), params), True)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite
    if nan_policy == "skip":
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if ema_decay:
      d = ema_decay_at(ema_decay, new_state["step"].astype(jnp.float32))
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema_params"], params)
      new_state["ema_params"] = (keep(ema, state["ema_params"]) if nan_policy == "skip"
                                 else ema)
    return new_state, {**sums, "grad_norm": grad_norm, "finite": finite,
                       "params_finite": params_finite}

  def eval_step(params, batch):
    outputs = model.apply({"params": params}, *task.model_inputs(batch), deterministic=True)
    return task.metric_sums(outputs, batch), task.eval_ids(outputs)

  return train_step, eval_step


def check_best_metric(best_metric: str, eval_metrics: dict) -> None:
  """A misspelt best metric would silently keep no best checkpoint: fail instead."""
  name = best_metric.removeprefix("eval_")
  if not best_metric.startswith("eval_") or name not in eval_metrics:
    raise errors.ConfigError(f"config.train.best_metric={best_metric!r} is not an evaluation "
                     f"metric; expected one of {sorted('eval_' + k for k in eval_metrics)}.")
