"""The train and eval steps: pure functions of arrays that the trainer jits.

`make_steps(task, model, tx, ...)` gives `train_step(state, batch, rng) -> (state,
metrics)` and `eval_step(params, batch) -> (metric sums, predicted ids)`; the task supplies
the model's inputs and its metric sums (`tasks/base.py`). A model may add auxiliary
objectives in training by sowing token sums into its 'losses' collection (added to the
loss) and 'metrics' (logged only), e.g. `tasks.neighbour_lm`. With an adversarial epsilon
> 0 the step also trains on adversarial inputs (`adversarial_perturbation`) at the point the
model marks with `tasks.models.perturbable` (its input embeddings). The state is a plain
dict `{"step", "params", "opt_state"[, "ema_params"]}` that orbax saves.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from birnn_jax import errors
from birnn_jax.tasks import config_keys
from birnn_jax.tasks.models import PERTURBED
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


def adversarial_perturbation(grad_BxTxD: jax.Array, epsilon: float) -> jax.Array:
  """The worst-case perturbation of one batch's inputs to first order (Goodfellow et al.
  2015; on embeddings, Miyato et al. 2017 and Yasunaga et al. 2018): each sentence's loss
  gradient g over its inputs [T, D], scaled to the L2 norm epsilon * sqrt(n D), where n counts
  the sentence's tokens whose input moves the loss (padding's gradient is zero). So epsilon
  is the perturbation's root-mean-square per input entry, whatever the sentence's length or
  the inputs' width. grad_BxTxD: [batch, time, features] -> the same shape, no gradient."""
  g = jax.lax.stop_gradient(grad_BxTxD).astype(jnp.float32)
  moved = jnp.sum(jnp.any(g != 0, axis=-1), axis=1)                          # [B]
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2)))                        # [B]
  scale = epsilon * jnp.sqrt(moved * g.shape[-1]) / jnp.maximum(norm, 1e-30)
  return (g * scale[:, None, None]).astype(grad_BxTxD.dtype)


def make_steps(task, model, tx, nan_policy: str, ema_decay: float = 0.0,
               adversarial_epsilon: float = 0.0):
  """(train_step, eval_step), pure functions of arrays. With `ema_decay` > 0 the state also
  holds `ema_params`, an exponential moving average of the parameters after each update
  (Polyak averaging; weight `ema_decay_at`), which evaluation reads instead. With
  `adversarial_epsilon` > 0 the loss is L(x) + L(x + r_adv), r_adv the
  `adversarial_perturbation` of L's gradient at x, the model's input embeddings (both
  terms under the same dropout masks); its second term is logged as 'adversarial_loss'."""

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])
    inputs = task.model_inputs(batch)

    def loss_fn(params, perturbations=None):
      variables = {"params": params}
      if perturbations is not None:
        variables[PERTURBED[0]] = perturbations
      outputs, sown = model.apply(variables, *inputs, deterministic=False,
                                  rngs={"dropout": rng}, mutable=SOWN)
      sums = with_sown(task.metric_sums(outputs, batch), sown)
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    if adversarial_epsilon:
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           perturbation_shapes(model, task, state["params"], inputs, rng))
      (loss, sums), (grads, at_inputs) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(state["params"], zeros)
      r_adv = jax.tree.map(lambda g: adversarial_perturbation(g, adversarial_epsilon),
                           at_inputs)
      (adv_loss, adv_sums), adv_grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"], r_adv)
      loss = loss + adv_loss
      grads = jax.tree.map(jnp.add, grads, adv_grads)
      sums = {**sums, "loss": sums["loss"] + adv_sums["loss"],
              "adversarial_loss": adv_sums["loss"]}
    else:
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


def steps_from_config(task, model, tx, train_config):
  """`make_steps` with the options `config.train` sets (nan_policy, ema_decay,
  adversarial_epsilon)."""
  return make_steps(task, model, tx, train_config.nan_policy,
                    config_keys.added_key(train_config, "train.ema_decay"),
                    config_keys.added_key(train_config, "train.adversarial_epsilon"))


def perturbation_shapes(model, task, params, inputs: tuple, rng) -> dict:
  """The shapes of the 'perturbations' collection the model's apply creates (traced only,
  nothing runs; a submodule's perturbation point nests under its name), or a ConfigError
  when the model marks no input to perturb."""
  _, variables = jax.eval_shape(
      lambda p: model.apply({"params": p}, *inputs, deterministic=False, rngs={"dropout": rng},
                            mutable=(PERTURBED[0],)), params)
  perturbations = flax.core.unfreeze(variables).get(PERTURBED[0], {})
  if not jax.tree.leaves(perturbations):
    raise errors.ConfigError(
        f"config.train.adversarial_epsilon > 0, but the model of task {task.config.task!r} marks "
        f"no input to perturb (`tasks.models.perturbable(self, x)` on its embeddings).")
  return perturbations


def check_best_metric(best_metric: str, eval_metrics: dict) -> None:
  """A misspelt best metric would silently keep no best checkpoint: fail instead."""
  name = best_metric.removeprefix("eval_")
  if not best_metric.startswith("eval_") or name not in eval_metrics:
    raise errors.ConfigError(f"config.train.best_metric={best_metric!r} is not an evaluation "
                     f"metric; expected one of {sorted('eval_' + k for k in eval_metrics)}.")
