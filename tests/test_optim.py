"""The optimiser from config: global-norm clipping, learning-rate schedules, and each
optimiser's update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from birnn_jax.training import config_lib
from birnn_jax.training import optim


def optim_config(**kw):
  o = config_lib.base_config().optim
  for k, v in kw.items():
    o[k] = v
  return o


def params():
  return {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}


def grads(scale: float):
  """A gradient tree of global norm `scale`."""
  g = {"w": jnp.full((3, 4), 1.0), "b": jnp.full((4,), 2.0)}
  return jax.tree.map(lambda x: x * scale / optax.global_norm(g), g)


@pytest.mark.parametrize("norm", [10.0, 2.0, 0.5])
def test_clip_norm_clips_the_global_norm(norm):
  # sgd with lr 1 turns the update into minus the (clipped) gradient.
  tx = optim.make_optimizer(optim_config(name="sgd", learning_rate=1.0, clip_norm=1.0), 10)
  g = grads(norm)
  updates, _ = tx.update(g, tx.init(params()), params())
  clipped = float(optax.global_norm(updates))
  assert clipped <= 1.0 + 1e-6
  assert clipped == pytest.approx(min(norm, 1.0), rel=1e-6)
  # Clipping rescales; it never changes the direction.
  jax.tree.map(lambda u, x: np.testing.assert_allclose(-u, x * min(1.0, 1.0 / norm),
                                                       rtol=1e-6), updates, g)


def test_clip_norm_zero_disables_clipping():
  tx = optim.make_optimizer(optim_config(name="sgd", learning_rate=1.0, clip_norm=0.0), 10)
  updates, _ = tx.update(grads(10.0), tx.init(params()), params())
  assert float(optax.global_norm(updates)) == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_adam_after_clipping_is_scale_free(clip):
  """Adam's first update is lr * sign(g) whatever the gradient's size, so clipping before
  Adam must still give a full-size step (clip is the first transform, not the last)."""
  tx = optim.make_optimizer(optim_config(name="adam", learning_rate=0.1, clip_norm=clip), 10)
  updates, _ = tx.update(grads(10.0), tx.init(params()), params())
  for u in jax.tree.leaves(updates):
    np.testing.assert_allclose(u, -0.1, rtol=1e-4)


def lr_at(schedule_name: str, steps, **kw):
  o = optim_config(schedule=schedule_name, learning_rate=0.1, **kw)
  schedule = optim.learning_rate_schedule(o, 100)
  return [float(schedule(s)) for s in steps]


def test_constant_schedule():
  assert lr_at("constant", [0, 50, 100, 1000]) == pytest.approx([0.1] * 4)


def test_cosine_schedule():
  assert lr_at("cosine", [0, 50, 100]) == pytest.approx([0.1, 0.05, 0.0], abs=1e-7)
  assert lr_at("cosine", [25])[0] == pytest.approx(0.05 * (1 + np.cos(np.pi / 4)), rel=1e-5)


def test_warmup_cosine_schedule():
  got = lr_at("warmup_cosine", [0, 5, 10, 55, 100], warmup_steps=10)
  assert got == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-6)


def test_warmup_cosine_without_warmup_starts_at_the_peak():
  got = lr_at("warmup_cosine", [0, 50, 100], warmup_steps=0)
  assert got == pytest.approx([0.1, 0.05, 0.0], abs=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine"])
def test_the_optimizer_follows_its_schedule(schedule):
  """sgd's k-th update of a unit gradient is minus the schedule's lr at step k."""
  o = optim_config(name="sgd", schedule=schedule, learning_rate=0.1, warmup_steps=4,
                   clip_norm=0.0)
  num_steps = 12
  tx = optim.make_optimizer(o, num_steps)
  expected = optim.learning_rate_schedule(o, num_steps)
  p = {"w": jnp.zeros(())}
  state = tx.init(p)
  for k in range(num_steps):
    updates, state = tx.update({"w": jnp.ones(())}, state, p)
    assert float(updates["w"]) == pytest.approx(-float(expected(k)), abs=1e-7), k


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_constructs_and_steps(name):
  tx = optim.make_optimizer(optim_config(name=name, momentum=0.9, weight_decay=0.01), 10)
  p = params()
  state = tx.init(p)
  updates, state = tx.update(grads(1.0), state, p)
  new = optax.apply_updates(p, updates)
  assert jax.tree.structure(new) == jax.tree.structure(p)
  for before, after in zip(jax.tree.leaves(p), jax.tree.leaves(new)):
    assert not np.allclose(before, after)
    assert np.all(np.isfinite(after))


def test_sgd_momentum():
  tx = optim.make_optimizer(optim_config(name="sgd", learning_rate=0.1, momentum=0.9,
                                         clip_norm=0.0), 10)
  p = {"w": jnp.zeros(())}
  state = tx.init(p)
  g = {"w": jnp.ones(())}
  first, state = tx.update(g, state, p)
  second, _ = tx.update(g, state, p)
  assert float(first["w"]) == pytest.approx(-0.1)
  assert float(second["w"]) == pytest.approx(-0.1 * 1.9)


def test_sgd_without_momentum_keeps_no_trace():
  tx = optim.make_optimizer(optim_config(name="sgd", learning_rate=0.1, momentum=0.0,
                                         clip_norm=0.0), 10)
  p = {"w": jnp.zeros(())}
  state = tx.init(p)
  for _ in range(2):
    update, state = tx.update({"w": jnp.ones(())}, state, p)
  assert float(update["w"]) == pytest.approx(-0.1)


def test_adamw_decays_weights_and_adam_does_not():
  p = {"w": jnp.full((2,), 3.0)}
  zero = {"w": jnp.zeros((2,))}
  for name, expected in (("adamw", -0.1 * 0.5 * 3.0), ("adam", 0.0)):
    tx = optim.make_optimizer(optim_config(name=name, learning_rate=0.1, weight_decay=0.5,
                                           clip_norm=0.0), 10)
    updates, _ = tx.update(zero, tx.init(p), p)
    np.testing.assert_allclose(updates["w"], expected, atol=1e-7, err_msg=name)
