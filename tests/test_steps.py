"""The train step's adversarial training (train.adversarial_epsilon): the perturbation's size
and direction, the two-term loss against a hand-built one, members, and its config errors.
(The plain step and parameter averaging are tested in test_train.py.)"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import config_lib
from birnn_jax.training import members
from birnn_jax.training import sharding
from birnn_jax.training import steps
from birnn_jax.training import train

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(num_steps: int = 1, epsilon: float = 0.0, name: str = "synthetic_tagging"):
  config = config_lib.load_experiment(ROOT / "experiments" / f"{name}.py", "smoke")
  config.train.num_steps = num_steps
  config.train.adversarial_epsilon = epsilon
  return config


@pytest.mark.parametrize("epsilon", [0.01, 0.5])
def test_the_perturbation_is_the_gradient_scaled_per_sentence(epsilon):
  """Each sentence's perturbation points along its gradient, with root-mean-square epsilon
  over its real tokens' entries; padding (zero gradient) stays unperturbed."""
  rng = np.random.default_rng(0)
  lengths = [5, 2, 7]
  g = np.zeros((3, 7, 4), np.float32)
  for b, n in enumerate(lengths):
    g[b, :n] = rng.normal(size=(n, 4))
  r = np.asarray(steps.adversarial_perturbation(jnp.asarray(g), epsilon))
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(np.sqrt(np.mean(r[b, :n] ** 2)), epsilon, rtol=1e-5)
    np.testing.assert_allclose(r[b] / np.linalg.norm(r[b]), g[b] / np.linalg.norm(g[b]),
                               rtol=1e-5, atol=1e-7)
    assert not r[b, n:].any()
  assert not np.asarray(steps.adversarial_perturbation(jnp.zeros((2, 3, 4)), epsilon)).any()


def test_init_creates_no_perturbation(tmp_path):
  """A user's `model.init` variables hold no batch-shaped perturbation, so they apply to
  batches of any shape, exactly as before the perturbation point was added."""
  trainer = train.Trainer(smoke_config(), tmp_path)
  inputs = trainer.task.model_inputs(trainer.task.train_batch(0))
  variables = trainer.model.init(jax.random.key(0), *inputs)
  assert set(variables) == {"params"}
  tokens, lengths = inputs
  logits = trainer.model.apply(variables, tokens[:1, :5], jnp.minimum(lengths[:1], 5))
  assert logits.shape[:2] == (1, 5)


def one_step(config, tmp_path):
  trainer = train.Trainer(config, tmp_path)
  state = trainer.init_state()
  params = jax.tree.map(np.asarray, jax.device_get(state["params"]))
  batch = sharding.put_batch(trainer.task.train_batch(0), trainer.mesh)
  new_state, metrics = trainer.train_step(state, batch, jax.random.key(config.seed + 1))
  return trainer, params, batch, jax.device_get(new_state["params"]), jax.device_get(metrics)


# The perturbation point sits at the top of the synthetic tagger and POS's, inside NER's
# encoder (a submodule): the step finds it at either depth.
TASKS = ["synthetic_tagging", "pos_ewt", "ner_uner"]


@pytest.fixture(scope="module", params=TASKS)
def plain_and_adversarial(request, tmp_path_factory):
  name = request.param
  plain = one_step(smoke_config(name=name), tmp_path_factory.mktemp("plain"))
  adversarial = one_step(smoke_config(epsilon=0.3, name=name),
                         tmp_path_factory.mktemp("adversarial"))
  return plain, adversarial


def test_the_adversarial_step_adds_the_loss_at_the_perturbed_inputs(plain_and_adversarial):
  """The logged loss is the clean one (the plain step's) plus the loss at x + r_adv, which
  is larger; r_adv rebuilt by hand from the input embeddings' gradient, itself checked
  against central differences."""
  (_, _, _, _, plain), (trainer, params, batch, _, adv) = plain_and_adversarial
  np.testing.assert_allclose(adv["loss"] - adv["adversarial_loss"], plain["loss"], rtol=1e-5)
  assert adv["adversarial_loss"] > plain["loss"]   # the perturbation climbs the loss

  model, task = trainer.model, trainer.task
  inputs = task.model_inputs(batch)
  rng = jax.random.fold_in(jax.random.key(trainer.config.seed + 1), 0)
  shapes = steps.perturbation_shapes(model, task, params, inputs, rng)
  assert len(jax.tree.leaves(shapes)) == 1

  def loss_at(offset):
    outputs = model.apply({"params": params, "perturbations": offset}, *inputs,
                          deterministic=False, rngs={"dropout": rng})
    return task.metric_sums(outputs, batch)["loss"]

  zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  g = jax.grad(loss_at)(zero)
  # The autodiff gradient agrees with central differences along a random direction.
  u = jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), a.shape) * (a != 0), g)
  dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(u)))
  # float32 sums: a small step's rounding and a large one's curvature both cost accuracy,
  # by how much depends on the model, so the best of three steps must agree.
  errors_by_step = []
  for h in (3e-3, 1e-2, 3e-2):
    fd = (loss_at(jax.tree.map(lambda a, h=h: h * a, u)) -
          loss_at(jax.tree.map(lambda a, h=h: -h * a, u))) / (2 * h)
    errors_by_step.append(abs(float(fd - dot)) / abs(float(dot)))
  assert min(errors_by_step) < 1e-2, errors_by_step
  r = jax.tree.map(lambda a: steps.adversarial_perturbation(a, 0.3), g)
  np.testing.assert_allclose(adv["adversarial_loss"], loss_at(r), rtol=1e-5)


def test_the_adversarial_step_updates_with_both_terms(plain_and_adversarial):
  (_, before, _, plain_after, _), (_, before_adv, _, adv_after, _) = plain_and_adversarial
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(before_adv)):
    np.testing.assert_array_equal(a, b)             # the same initialisation
  moved = [not np.allclose(p, q) for p, q in zip(jax.tree.leaves(plain_after),
                                                 jax.tree.leaves(adv_after))]
  assert any(moved)


def test_members_train_adversarially_as_one_seed_runs(tmp_path):
  """Under the member axis (vmap) each member's adversarial step equals its one-seed run's."""
  config = smoke_config(num_steps=2, epsilon=0.3)
  config.train.num_seeds = 2
  multi = members.MembersTrainer(config, tmp_path / "members")
  multi.train()
  single = smoke_config(num_steps=2, epsilon=0.3)
  single.seed = config.seed + 1
  train.Trainer(single, tmp_path / "seed1").train()
  rows = lambda path: [r for r in map(json.loads, path.read_text().splitlines())
                       if "train_adversarial_loss" in r]
  got = rows(tmp_path / "members" / f"seed_{config.seed + 1}" / "metrics.jsonl")
  want = rows(tmp_path / "seed1" / "metrics.jsonl")
  assert got and len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a["train_adversarial_loss"], b["train_adversarial_loss"],
                               rtol=1e-5)


def test_a_negative_epsilon_is_refused():
  with pytest.raises(errors.ConfigError, match="train.adversarial_epsilon"):
    config_lib.validate(smoke_config(epsilon=-0.1))


def test_a_model_without_a_perturbation_point_is_refused(tmp_path):
  """The character LM marks no input embeddings to perturb: a ConfigError naming the key and
  the task, not a silent plain step."""
  config = smoke_config(epsilon=0.1, name="lm_time_machine")
  with pytest.raises(errors.ConfigError, match="adversarial_epsilon.*'lm'"):
    one_step(config, tmp_path)
