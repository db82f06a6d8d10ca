"""Optimiser from config: adam | adamw | sgd, a learning-rate schedule, global-norm clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from birnn_jax import errors

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int):
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.learning_rate)
  if optim.schedule == "cosine":
    return optax.cosine_decay_schedule(optim.learning_rate, max(num_steps, 1))
  if optim.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, optim.warmup_steps, max(num_steps, optim.warmup_steps + 1))
  raise errors.ConfigError(f"config.optim.schedule={optim.schedule!r}; expected one of {SCHEDULES}.")


def make_optimizer(optim: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """`optim`: config.optim (name, learning_rate, schedule, warmup_steps, clip_norm,
  weight_decay, momentum). Clipping by global norm first, as D2L clips at 1."""
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == "adam":
    tx = optax.adam(lr)
  elif optim.name == "adamw":
    tx = optax.adamw(lr, weight_decay=optim.weight_decay)
  elif optim.name == "sgd":
    tx = optax.sgd(lr, momentum=optim.momentum or None)
  else:
    raise errors.ConfigError(f"config.optim.name={optim.name!r}; expected one of {OPTIMIZERS}.")
  if optim.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), tx)
  return tx


def global_norm(tree) -> jax.Array:
  """The global L2 norm of a pytree: optax's `tree.norm` (optax >= 0.2.5), else its older
  `global_norm` (which newer optax deprecates)."""
  norm = getattr(getattr(optax, "tree", None), "norm", None)
  return norm(tree) if norm is not None else optax.global_norm(tree)


def init_state(model, tx: optax.GradientTransformation, inputs: tuple, key: jax.Array,
               ema: bool = False) -> dict:
  """A fresh train state `{"step", "params", "opt_state"}`, the pytree checkpoints hold:
  `model.init` on `inputs` (a batch's model inputs) with `key` for params and dropout.
  With `ema` it also holds "ema_params", the moving average, which starts at the init."""
  variables = model.init({"params": key, "dropout": key}, *inputs, deterministic=True)
  params = variables["params"]
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  if ema:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return state


def eval_params(state: dict):
  """The parameters to evaluate and predict with: the moving average when the state holds
  one (`train.ema_decay` > 0), else the trained parameters."""
  return state.get("ema_params", state["params"])
