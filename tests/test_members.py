"""Members (birnn_jax/training/members.py): N members trained by one vmapped program equal N
one-seed runs of seeds seed … seed + N − 1, step for step (losses and parameters, to float32
rounding), on the synthetic, POS and NER tasks; the helpers' seeds and stacking."""

import json
import pathlib

import jax
import numpy as np
import pytest

from birnn_jax import errors
from birnn_jax.training import config_lib
from birnn_jax.training import members
from birnn_jax.training import optim
from birnn_jax.training import sharding
from birnn_jax.training import steps
from birnn_jax.training import trainer as trainer_lib
from helpers import write_greek_treebank, write_uner

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_MEMBERS, NUM_STEPS = 3, 3


def test_member_seeds_and_configs_differ_in_the_seed_only():
  config = config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  config.seed = 7
  assert members.member_seeds(7, 3) == [7, 8, 9]
  configs = members.member_configs(config, 3)
  assert [c.seed for c in configs] == [7, 8, 9] and config.seed == 7
  for c in configs:
    diffs = config_lib.config_differences(config_lib.flatten(config), c)
    assert diffs == ([] if c.seed == 7 else [f"seed: 7 -> {c.seed}"])
  with pytest.raises(ValueError, match="at least 1"):
    members.member_seeds(0, 0)


def test_stack_and_unstack_are_inverses():
  trees = [{"a": np.full((2,), k, np.float32), "b": (np.arange(3) + k,)} for k in range(4)]
  stacked = members.stack(trees)
  assert stacked["a"].shape == (4, 2) and stacked["b"][0].shape == (4, 3)
  for k, tree in enumerate(members.unstack(stacked, 4)):
    jax.tree.map(np.testing.assert_array_equal, tree, trees[k])


def _config(task: str, tmp_path):
  if task == "synthetic":
    return config_lib.load_experiment(ROOT / "experiments" / "synthetic_tagging.py", "smoke")
  if task == "ner":   # the CRF head; a dev file of its own, every sentence within pad_to
    config = config_lib.load_experiment(ROOT / "experiments" / "ner_uner.py", "smoke")
    config.compare_variants = False
    config.data.dir = str(write_uner(tmp_path / "UNER_Tiny"))
    config.data.pad_to = 8
    config.data.eval_batch_size = 16
    return config
  config = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py", "smoke")
  folder = write_greek_treebank(tmp_path / "UD_Greek")
  # A dev file of its own: without one, each seed would hold out another dev split.
  (folder / "el_tiny-ud-dev.conllu.xz").write_bytes(
      (folder / "el_tiny-ud-test.conllu.xz").read_bytes())
  config.data.dir = str(folder)
  config.data.pad_to = 8
  config.model.dropout = config.model.embed_dropout = 0.25   # each member its own masks
  return config


@pytest.mark.parametrize("task", ["synthetic", "pos"])
def test_vmapped_members_equal_one_seed_runs(task, tmp_path):
  configs = members.member_configs(_config(task, tmp_path), NUM_MEMBERS)
  trainers = [trainer_lib.Trainer(c, tmp_path / f"member_{k}") for k, c in enumerate(configs)]

  # The one-seed runs, each exactly as Trainer.train steps it.
  one_seed_losses, one_seed_params = [], []
  for t in trainers:
    state, losses = t.init_state(), []
    rng = jax.random.key(t.config.seed + 1)
    for step in range(NUM_STEPS):
      batch = sharding.put_batch(t.task.train_batch(step), t.mesh)
      state, metrics = t.train_step(state, batch, rng)
      losses.append(float(metrics["loss"] / metrics["count"]))
    one_seed_losses.append(losses)
    one_seed_params.append(jax.device_get(state["params"]))

  # The same members in one program: every tree gains a leading member axis.
  first = trainers[0]
  ema = config_lib.added_key(first.config.train, "train.ema_decay") > 0
  train_step, _ = members.member_steps(*steps.make_steps(
      first.task, first.model, first.tx, first.config.train.nan_policy))
  train_step = jax.jit(train_step)
  init = jax.jit(jax.vmap(lambda key, batch: optim.init_state(
      first.model, first.tx, first.task.model_inputs(batch), key, ema=ema)))
  batches = lambda step: members.stack([t.task.train_batch(step) for t in trainers])
  seeds = [c.seed for c in configs]
  state = init(members.stack([jax.random.key(s) for s in seeds]), batches(0))
  rngs = members.stack([jax.random.key(s + 1) for s in seeds])
  member_losses = []
  for step in range(NUM_STEPS):
    state, metrics = train_step(state, batches(step), rngs)
    member_losses.append(np.asarray(metrics["loss"] / metrics["count"]))
  assert train_step._cache_size() == 1   # one program for every member and step

  np.testing.assert_allclose(np.stack(member_losses, axis=1), one_seed_losses, rtol=2e-5)
  for k, params in enumerate(members.unstack(jax.device_get(state["params"]), NUM_MEMBERS)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params, one_seed_params[k])
  # The members really differ (their own initialisation, data order and dropout).
  assert len({round(float(l[0]), 5) for l in one_seed_losses}) == NUM_MEMBERS


# The trainer of several members ---------------------------------------------------------------


def _one_seed_rows(config, workdir):
  trainer_lib.Trainer(config, workdir).train()
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _close_rows(rows, expected):
  assert [r["step"] for r in rows] == [r["step"] for r in expected]
  for row, want in zip(rows, expected):
    assert row.keys() == want.keys()
    np.testing.assert_allclose([row[k] for k in sorted(row)], [want[k] for k in sorted(want)],
                               rtol=2e-5, atol=1e-6, err_msg=str((row, want)))


@pytest.mark.parametrize("task", ["synthetic", "pos", "pos_buckets", "ner"])
def test_a_run_of_members_equals_its_one_seed_runs(task, tmp_path):
  """Member k of an N-member run: the metrics rows and results of the one-seed run of its
  seed (to float32 rounding), from one compiled train step. 'pos_buckets': length buckets,
  so the members' batches differ in shape and are padded to a common one, which changes
  nothing a model computes; but a dropout mask is drawn for the padded shape, so there the
  models' dropout is off (rare-word dropout, drawn on the host, stays on)."""
  config = _config(task.removesuffix("_buckets"), tmp_path)
  if task == "pos_buckets":
    config.data.pad_to = 2
    m = config.model
    m.dropout = m.embed_dropout = m.word_dropout = m.output_dropout = 0.0
  config.train.num_seeds = NUM_MEMBERS
  run = members.make_trainer(config, tmp_path / "members")
  shapes = {str(jax.tree.map(np.shape, t.train_batch(s))) for t in run.tasks
            for s in range(config.train.num_steps)}
  assert (len(shapes) > 1) == (task == "pos_buckets")   # the padding path is exercised
  assert isinstance(run, members.MembersTrainer)
  results = run.train()
  assert run.train_step._cache_size() == 1
  assert results["seeds"] == [config.seed + k for k in range(NUM_MEMBERS)]
  for k, seed in enumerate(results["seeds"]):
    one = config.copy_and_resolve_references()
    one.train.num_seeds, one.seed = 1, seed
    expected_rows = _one_seed_rows(one, tmp_path / f"one_seed_{seed}")
    folder = tmp_path / "members" / f"seed_{seed}"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    _close_rows(rows, expected_rows)
    expected = json.loads((tmp_path / f"one_seed_{seed}" / "results.json").read_text())
    member = json.loads((folder / "results.json").read_text())
    for key in (k for k in expected if k.startswith(("test_", "dev_", "eval_"))
                and isinstance(expected[k], float)):
      np.testing.assert_allclose(member[key], expected[key], rtol=2e-5, err_msg=key)
  # The run's own results: the members' mean and statistics.
  key = next(k for k in results["statistics"] if k.startswith("test_"))
  values = [m[key] for m in results["members"]]
  assert results["statistics"][key]["mean"] == pytest.approx(np.mean(values))
  assert results[key] == pytest.approx(np.mean(values))


def test_a_run_of_members_resumes_exactly(tmp_path):
  config = _config("synthetic", tmp_path)
  config.train.num_seeds = 2
  config.train.num_steps, config.train.checkpoint_every = 8, 4
  config.train.log_every = config.train.eval_every = 4
  uninterrupted = members.make_trainer(config, tmp_path / "whole").train()
  first = config.copy_and_resolve_references()
  first.train.num_steps = 4                       # as if stopped after the step-4 save
  first_part = members.make_trainer(first, tmp_path / "resumed").train()
  resumed = members.make_trainer(config, tmp_path / "resumed").train()
  # Training time is summed over the resumes, and a finished run run again keeps it.
  again = members.make_trainer(config, tmp_path / "resumed").train()
  assert again["train_seconds"] == resumed["train_seconds"] > first_part["train_seconds"] > 0
  for a, b in zip(resumed["members"], uninterrupted["members"]):
    for key in (k for k in a if k.startswith(("test_", "best_"))):
      assert a[key] == b[key], key
    assert "best_step" in a
  for seed in resumed["seeds"]:
    read = lambda run: (tmp_path / run / f"seed_{seed}" / "metrics.jsonl").read_text()
    assert read("resumed") == read("whole")
  # The run's own curves: the members' mean with a band (a PNG per metric).
  pngs = sorted(p.stem for p in (tmp_path / "whole" / "plots").glob("*.png"))
  assert "loss" in pngs and "accuracy" in pngs
  assert (tmp_path / "whole" / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_members_of_other_data_are_refused_naming_why(tmp_path):
  config = config_lib.load_experiment(ROOT / "experiments" / "pos_ewt.py", "smoke")
  config.data.dir = str(write_greek_treebank(tmp_path / "UD_Greek"))   # no dev file
  config.data.pad_to = 8
  config.train.num_seeds = 2
  with pytest.raises(errors.ConfigError, match="config.train.num_seeds=2.*same data"):
    members.make_trainer(config, tmp_path / "members")


def test_one_seed_is_the_plain_trainer(tmp_path):
  config = _config("synthetic", tmp_path)
  assert type(members.make_trainer(config, tmp_path / "one")) is trainer_lib.Trainer
  config.train.num_seeds = 0
  with pytest.raises(errors.ConfigError, match="config.train.num_seeds=0"):
    config_lib.validate(config)
  config.train.num_seeds, config.mesh.members = 3, 2   # before anything is compiled
  with pytest.raises(errors.ConfigError,
                     match="num_seeds=3 must divide by config.mesh.members=2"):
    members.make_trainer(config, tmp_path / "three")


def test_a_member_of_a_run_is_loaded_by_index_or_best(tmp_path):
  """`birnn_jax.load(workdir, member=k)` tags as the one-seed run of member k's seed; a run
  of several is their ensemble unless one is named; 'best' is the best on dev."""
  import birnn_jax  # pylint: disable=g-import-not-at-top
  config = _config("pos", tmp_path)
  config.train.num_seeds = 2
  members.make_trainer(config, tmp_path / "members").train()
  one = config.copy_and_resolve_references()
  one.train.num_seeds, one.seed = 1, config.seed + 1
  trainer_lib.Trainer(one, tmp_path / "one_seed").train()
  sentences = [["Ο", "άνθρωπος", "γράφει", "."], ["Η", "γυναίκα", "."]]
  got = birnn_jax.load(tmp_path / "members", member=1)
  want = birnn_jax.load(tmp_path / "one_seed")
  assert got.tag(sentences) == want.tag(sentences)
  np.testing.assert_allclose(jax.tree.leaves(got.params)[0], jax.tree.leaves(want.params)[0],
                             rtol=1e-4, atol=1e-6)
  assert birnn_jax.load(tmp_path / "members").member == "ensemble"   # without a member
  with pytest.raises(errors.InputError, match="member=5"):
    birnn_jax.load(tmp_path / "members", member=5)
  results = json.loads((tmp_path / "members" / "results.json").read_text())
  values = [m["best_value"] for m in results["members"]]
  best = birnn_jax.load(tmp_path / "members", member="best")
  chosen = birnn_jax.load(tmp_path / "members", member=int(np.argmax(values)))
  jax.tree.map(np.testing.assert_array_equal, best.params, chosen.params)


def test_the_seeds_verdict_states_means_intervals_ensembles_and_paired_differences():
  from birnn_jax.training import stats  # pylint: disable=g-import-not-at-top
  a, b = [0.70, 0.72, 0.74], [0.66, 0.69, 0.70]
  summary = {"seeds": [0, 1, 2],
             "member_statistics": {"crf": {"test_f1": stats.describe(a)},
                                   "softmax": {"test_f1": stats.describe(b)}},
             "ensembles": {"crf": {"test_f1": 0.75}},
             "paired_differences": {"crf_minus_softmax": {
                 "test_f1": stats.paired_difference(a, b)}}}
  verdict = members.seeds_verdict(summary, "test_f1")
  paired = stats.paired_difference(a, b)
  assert verdict.startswith("test_f1 over 3 seeds (mean ± sd [95% CI]): crf 0.7200 ± 0.0200 "
                            "[0.6703, 0.7697], ensemble 0.7500; softmax 0.6833 ± ")
  assert (f"crf_minus_softmax +{paired['mean']:.4f} [{paired['ci95'][0]:.4f}, "
          f"{paired['ci95'][1]:.4f}], p = {paired['p_ttest']:.3g} (paired t)") in verdict
  assert members.seeds_verdict(summary, "dev_f1") == ""
  assert members.seeds_verdict({"test_f1": 0.7}, "test_f1") == ""


def test_the_seeds_table_script_prints_an_experiment_page_s_table(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  from birnn_jax.training import stats  # pylint: disable=g-import-not-at-top
  a, b = [0.70, 0.72, 0.74], [0.66, 0.69, 0.70]
  summary = {"seeds": [0, 1, 2],
             "member_statistics": {"crf": {"test_f1": stats.describe(a),
                                           "dev_loss": stats.describe(b)}},
             "ensembles": {"crf": {"test_f1": 0.75, "dev_loss": 0.1}},
             "paired_differences": {"crf_minus_softmax": {
                 "test_f1": stats.paired_difference(a, b)}}}
  (tmp_path / "results.json").write_text(json.dumps(summary))
  out = subprocess.run([sys.executable, str(ROOT / "scripts" / "seeds_table.py"),
                        str(tmp_path), "test_f1"], capture_output=True, text=True, check=True)
  assert ("| crf | test_f1 | 0.7200 ± 0.0200 | [0.6703, 0.7697] | 3 | 0.7000, 0.7200, "
          "0.7400 | 0.7500 |") in out.stdout
  assert "dev_loss" not in out.stdout and "| crf_minus_softmax | test_f1 |" in out.stdout
  assert out.stdout.rstrip().endswith(members.seeds_verdict(summary, "test_f1"))


def test_variants_are_compared_on_their_figures_not_their_bookkeeping():
  from birnn_jax.training import stats  # pylint: disable=g-import-not-at-top
  def run(offset):
    per_member = [{"dev_f1": 0.7 + offset + 0.01 * k, "future_hidden_perplexity": 5.0 - k,
                   "steps": 10, "train_seconds": 3.0 + k, "test_unseen_count": 7}
                  for k in range(3)]
    return {"seeds": [0, 1, 2], "members": per_member,
            "statistics": stats.summarize_members(per_member)}
  summary = members.experiment_statistics({}, {"a": run(0.05), "b": run(0.0)})
  paired = summary["paired_differences"]["a_minus_b"]
  assert sorted(paired) == ["dev_f1", "future_hidden_perplexity"]
  assert paired["dev_f1"]["mean"] == pytest.approx(0.05)
  table = members.statistics_table(summary)
  assert "| a | future_hidden_perplexity |" in table and "train_seconds" not in table
