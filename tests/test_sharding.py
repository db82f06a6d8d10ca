"""Data parallelism and multi-host: the same losses on 1 device, 8 devices and 2 processes.

JAX fixes its device count when it starts, so the multi-device checks run in subprocesses
with 8 fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8). This file is
also the worker those subprocesses run: `python tests/test_sharding.py '<json spec>'`.
"""

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "synthetic_tagging.py"
REPORT = "SHARDING_REPORT "
TIMEOUT_S = 600
TOLERANCE = 1e-5   # float32: a different device count changes the order of the sums


# The worker (runs in a subprocess) ---------------------------------------------------------

def smoke_config(overrides: dict):
  """The 'bidirectional' variant of synthetic_tagging.py:smoke, logged every step."""
  from birnn_jax.training import config_lib  # pylint: disable=g-import-not-at-top
  from birnn_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.Task.variants(config_lib.load_experiment(EXPERIMENT, "smoke"))[
      "bidirectional"]
  config.train.log_every = 1
  for key, value in overrides.items():
    group, name = key.split(".")
    config[group][name] = value
  return config


def worker(spec: dict) -> None:
  """Trains as `spec` says and prints a report line (the parent reads metrics.jsonl)."""
  from birnn_jax.training import members  # pylint: disable=g-import-not-at-top
  from birnn_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  traces = count_traces(trainer_lib)
  trainer = members.make_trainer(smoke_config(spec["overrides"]), spec["workdir"])
  resumed_from = trainer.manager.latest_step()
  results = trainer.train()
  check_put_batch(trainer.mesh)
  leaf = jax.tree.leaves(trainer.init_state()["params"])[0]
  if isinstance(trainer, members.MembersTrainer):   # its steps are vmapped: count programs
    traces = {"train_step": trainer.train_step._cache_size(),
              "eval_step": trainer.eval_step._cache_size()}
  print(REPORT + json.dumps({
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "mesh_size": trainer.mesh.size, "mesh_shape": dict(trainer.mesh.shape),
      "resumed_from": resumed_from,
      "params_shard_shape": list(leaf.sharding.shard_shape(leaf.shape)),
      "params_shape": list(leaf.shape),
      "train_step_compiles": traces["train_step"], "eval_step_compiles": traces["eval_step"],
      "results": results}), flush=True)


def count_traces(trainer_lib) -> dict[str, int]:
  """Wraps `trainer_lib.make_steps` (the trainer module's) so that each trace of the train and eval steps (a jit
  compile: the Python body runs only while JAX traces it) is counted in the returned dict."""
  traces = {"train_step": 0, "eval_step": 0}
  make_steps = trainer_lib.make_steps

  def counting_make_steps(*args, **kwargs):
    def counted(name, fn):
      def traced(*inputs):
        traces[name] += 1
        return fn(*inputs)
      return traced
    return tuple(counted(name, fn) for name, fn in zip(traces, make_steps(*args, **kwargs)))

  trainer_lib.make_steps = counting_make_steps
  return traces


def check_put_batch(mesh) -> None:
  """Every device this process feeds holds exactly the global rows its shard index names."""
  from birnn_jax.training import sharding  # pylint: disable=g-import-not-at-top
  n = 2 * mesh.size
  batch = {"tokens": np.arange(n * 3).reshape(n, 3)}
  placed = sharding.put_batch(batch, mesh)["tokens"]
  assert placed.shape == (n, 3)
  for shard in placed.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), batch["tokens"][shard.index])


# Helpers for the parent ---------------------------------------------------------------------

def env_with_devices(count: int, **extra: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_") and k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", **extra)
  return env


def start(spec: dict, env: dict, log: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, __file__, json.dumps(spec)], cwd=ROOT, env=env,
                          stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log: pathlib.Path) -> dict:
  """Waits for a worker (killing it on timeout) and returns its report."""
  try:
    proc.wait(timeout=TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  out = log.read_text()
  assert proc.returncode == 0, f"worker failed (rc={proc.returncode}):\n{out[-6000:]}"
  lines = [l for l in out.splitlines() if l.startswith(REPORT)]
  assert lines, f"worker printed no report:\n{out[-6000:]}"
  return json.loads(lines[-1][len(REPORT):])


def run_worker(tmp: pathlib.Path, name: str, devices: int, overrides: dict | None = None,
               workdir: pathlib.Path | None = None) -> tuple[dict, pathlib.Path]:
  workdir = workdir or tmp / name
  log = tmp / f"{name}.log"
  spec = {"workdir": str(workdir), "overrides": overrides or {}}
  return finish(start(spec, env_with_devices(devices), log), log), workdir


def losses(workdir: pathlib.Path) -> dict[int, float]:
  """step -> train loss from metrics.jsonl (each step must be logged exactly once): the
  run's, or a member's folder's."""
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows]
  assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
  return {r["step"]: r["train_loss"] for r in rows}


def assert_same_losses(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  steps = sorted(want)
  np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps],
                             rtol=TOLERANCE, atol=TOLERANCE)


def free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# Fast tests ---------------------------------------------------------------------------------

class FakeMeshConfig(dict):
  __getattr__ = dict.__getitem__


def mesh_config(**kw):
  base = {"data": -1, "distributed": False, "coordinator_address": "", "num_processes": 0,
          "process_id": -1}
  return FakeMeshConfig({**base, **kw})


def test_single_process_needs_no_distributed_runtime(monkeypatch):
  from birnn_jax.training import sharding
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  assert sharding.distributed_settings(mesh_config(), environ={}) is None
  assert sharding.maybe_initialize_distributed(mesh_config()) is False


def test_distributed_settings_from_config_then_env():
  from birnn_jax.training import sharding
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert sharding.distributed_settings(mesh_config(), env) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  config = mesh_config(distributed=True, coordinator_address="host:99", num_processes=2,
                       process_id=1)
  assert sharding.distributed_settings(config, env) == {
      "coordinator_address": "host:99", "num_processes": 2, "process_id": 1}
  # distributed=True alone: JAX auto-detects (TPU pods, Slurm, Open MPI).
  assert sharding.distributed_settings(mesh_config(distributed=True), {}) == {
      "coordinator_address": None, "num_processes": None, "process_id": None}
  with pytest.raises(ValueError, match="config.mesh.process_id=2"):
    sharding.distributed_settings(mesh_config(distributed=True, num_processes=2,
                                              process_id=2), {})
  with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two'"):
    sharding.distributed_settings(mesh_config(distributed=True),
                                  {"JAX_NUM_PROCESSES": "two"})


def test_mesh_and_batch_on_local_devices():
  import jax
  from birnn_jax.training import sharding
  mesh = sharding.make_mesh(mesh_config())
  assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
  n = 4 * mesh.size
  batch = {"tokens": np.arange(n * 3).reshape(n, 3), "lengths": np.arange(n)}
  placed = sharding.put_batch(batch, mesh)
  assert placed["tokens"].shape == (n, 3)
  assert placed["tokens"].sharding == sharding.batch_sharding(mesh)
  np.testing.assert_array_equal(np.asarray(placed["tokens"]), batch["tokens"])
  np.testing.assert_array_equal(sharding.process_rows(mesh, n), np.arange(n))
  # A value may be a tuple of arrays (the POS task's character tiers), each split by batch.
  tiers = {"chars": (np.ones((n, 2, 16)), np.zeros((n, 3, 8))), "lengths": np.arange(n)}
  placed = sharding.put_batch(tiers, mesh)
  assert [t.shape for t in placed["chars"]] == [(n, 2, 16), (n, 3, 8)]
  assert placed["chars"][1].sharding == sharding.batch_sharding(mesh)
  with pytest.raises(ValueError, match="leading"):
    sharding.put_batch({"chars": (np.ones((n, 2)), np.ones((n + 1, 2)))}, mesh)
  too_many = jax.device_count() + 1
  with pytest.raises(ValueError, match=f"config.mesh.data={too_many}"):
    sharding.make_mesh(mesh_config(data=too_many))


_EIGHT_DEVICE_CHECKS = textwrap.dedent("""
    import numpy as np, jax
    from birnn_jax.training import sharding
    class C(dict):
      __getattr__ = dict.__getitem__
    cfg = lambda data: C(data=data, distributed=False, coordinator_address="",
                         num_processes=0, process_id=-1)
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(cfg(-1))
    assert mesh.shape == {"data": 8}
    assert sharding.make_mesh(cfg(4)).shape == {"data": 4}
    members = sharding.make_mesh(C(cfg(-1), members=4))
    assert members.shape == {"members": 4, "data": 2}
    assert sharding.make_mesh(C(cfg(1), members=2)).shape == {"members": 2, "data": 1}
    stacked = jax.device_put(np.zeros((8, 6)), sharding.members_sharding(members, batch=True))
    assert {s.data.shape for s in stacked.addressable_shards} == {(2, 3)}
    for bad in (C(cfg(-1), members=16), C(cfg(4), members=4)):
      try:
        sharding.make_mesh(bad)
        raise AssertionError("no error")
      except ValueError as e:
        assert "config.mesh.members=" in str(e) and "8 are visible" in str(e), e
    try:
      sharding.check_batch_size(12, mesh)
      raise AssertionError("no error")
    except ValueError as e:
      assert "config.train.batch_size=12" in str(e), e
    batch = {"tokens": np.arange(16 * 5).reshape(16, 5), "lengths": np.arange(16)}
    placed = sharding.put_batch(batch, mesh)
    shards = placed["tokens"].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(2, 5)}
    for s in shards:  # device k of the mesh holds rows 2k, 2k+1
      k = list(mesh.devices).index(s.device)
      np.testing.assert_array_equal(np.asarray(s.data), batch["tokens"][2 * k:2 * k + 2])
    print("OK")
""")


def test_eight_devices_mesh_batch_and_errors():
  """make_mesh, check_batch_size's error, and put_batch's shards with 8 fake devices."""
  proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICE_CHECKS], cwd=ROOT,
                        env=env_with_devices(8), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


# Slow end-to-end tests ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs started once and shared: workers on 1 and 8 devices (20 smoke steps each)."""
  tmp = tmp_path_factory.mktemp("sharding")
  cache = {}

  def get(name: str, devices: int):
    if name not in cache:
      cache[name] = run_worker(tmp, name, devices)
    return cache[name]
  return get


@pytest.mark.slow
def test_eight_devices_match_one_device_and_compile_once(runs):
  (one, one_dir), (eight, eight_dir) = runs("one_device", 1), runs("eight_devices", 8)
  assert (one["device_count"], one["mesh_size"]) == (1, 1)
  assert (eight["device_count"], eight["mesh_size"]) == (8, 8)
  for report in (one, eight):
    assert report["train_step_compiles"] == 1, report
    assert report["eval_step_compiles"] == 1, report
  assert len(losses(one_dir)) == 20
  assert_same_losses(losses(eight_dir), losses(one_dir))
  np.testing.assert_allclose(eight["results"]["test_accuracy"],
                             one["results"]["test_accuracy"], atol=1e-6)


@pytest.mark.slow
def test_members_split_over_eight_devices_match_one_device(tmp_path):
  """4 members on a ("members", "data") mesh of 8 fake devices (4 rows of 2): each device
  holds one member's state and half of that member's batch, and every member's losses and results
  are those of the same 4 members on one device; one program each."""
  overrides = {"train.num_seeds": 4, "train.num_steps": 12}
  one, one_dir = run_worker(tmp_path, "members_one", 1, overrides)
  eight, eight_dir = run_worker(tmp_path, "members_eight", 8,
                                {**overrides, "mesh.members": 4})
  assert one["mesh_shape"] == {"data": 1}
  assert eight["mesh_shape"] == {"members": 4, "data": 2}
  assert eight["params_shape"][0] == 4 and eight["params_shard_shape"][0] == 1
  assert one["params_shard_shape"] == one["params_shape"]
  for report in (one, eight):
    assert report["train_step_compiles"] == report["eval_step_compiles"] == 1, report
  seeds = one["results"]["seeds"]
  assert eight["results"]["seeds"] == seeds and len(seeds) == 4
  for seed in seeds:
    got, want = losses(eight_dir / f"seed_{seed}"), losses(one_dir / f"seed_{seed}")
    assert len(want) == 12
    assert_same_losses(got, want)
  np.testing.assert_allclose([m["test_accuracy"] for m in eight["results"]["members"]],
                             [m["test_accuracy"] for m in one["results"]["members"]],
                             atol=1e-6)


@pytest.mark.slow
def test_checkpoint_from_eight_devices_resumes_on_one(runs):
  """Keep the 8-device run's step-10 checkpoint only, resume it on 1 device to step 20:
  the same losses as the uninterrupted 1-device run."""
  (_, one_dir), (_, eight_dir) = runs("one_device", 1), runs("eight_devices", 8)
  tmp = eight_dir.parent
  workdir = tmp / "resumed"
  shutil.copytree(eight_dir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "20")
  (workdir / "results.json").unlink()
  report, _ = run_worker(tmp, "resumed", 1, workdir=workdir)
  assert report["resumed_from"] == 10 and report["mesh_size"] == 1
  assert report["train_step_compiles"] == 1
  assert_same_losses(losses(workdir), losses(one_dir))


@pytest.mark.slow
def test_two_processes_match_one(runs, tmp_path):
  """Two processes x 4 devices form one 8-device job through jax.distributed: process 0
  joins by config keys, process 1 by environment variables."""
  _, one_dir = runs("one_device", 1)
  address = f"localhost:{free_port()}"
  workdir = tmp_path / "two_processes"
  by_config = {"mesh.distributed": True, "mesh.coordinator_address": address,
               "mesh.num_processes": 2, "mesh.process_id": 0}
  envs = [env_with_devices(4),
          env_with_devices(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                           JAX_PROCESS_ID="1")]
  specs = [{"workdir": str(workdir), "overrides": by_config},
           {"workdir": str(workdir), "overrides": {}}]
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = []
  try:
    for spec, env, log in zip(specs, envs, logs):
      procs.append(start(spec, env, log))
    reports = [finish(p, log) for p, log in zip(procs, logs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, report in enumerate(reports):
    assert report["process_index"] == i and report["process_count"] == 2
    assert (report["device_count"], report["local_device_count"]) == (8, 4)
    assert report["mesh_size"] == 8 and report["train_step_compiles"] == 1
    assert report["results"]["test_loss"] == reports[0]["results"]["test_loss"]
  # Only process 0 writes logs, results and plots (losses() also checks no step twice).
  assert_same_losses(losses(workdir), losses(one_dir))
  assert (workdir / "results.json").exists() and (workdir / "plots").is_dir()


if __name__ == "__main__":
  worker(json.loads(sys.argv[1]))
