"""Data parallelism with jax.sharding: a ("data",) mesh, batches split along it, the train
state replicated; multi-host through `jax.distributed.initialize()`. A run of several
members (`training.members`) may split them over a ("members", "data") mesh.

One process or many, the program is the same: every process builds the same global batch
(a pure function of (seed, step)), keeps only the rows its own devices hold, and the jitted
steps see one global array. So the batches, and the losses, do not depend on how many
devices or processes there are.
"""

import functools
import os
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from birnn_jax import errors

# Environment variables read when the config leaves a setting at its default.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def distributed_settings(mesh_config: ml_collections.ConfigDict,
                         environ=None) -> dict | None:
  """`jax.distributed.initialize` kwargs, or None for a single-process run.

  A run is distributed when `config.mesh.distributed` is True or $JAX_COORDINATOR_ADDRESS
  is set. Each of coordinator address, process count and process id comes from
  `config.mesh.*` when set there, else from $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES /
  $JAX_PROCESS_ID, else None (JAX then detects it: Cloud TPU, Slurm, Open MPI).
  """
  environ = os.environ if environ is None else environ
  if not (mesh_config.distributed or environ.get(ENV_COORDINATOR)):
    return None

  def from_env(name: str, key: str) -> int | None:
    value = environ.get(name, "")
    if not value:
      return None
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"${name}={value!r} is not an integer (it stands in for "
                       f"config.mesh.{key}).") from None

  num = mesh_config.num_processes if mesh_config.num_processes > 0 else from_env(
      ENV_NUM_PROCESSES, "num_processes")
  pid = mesh_config.process_id if mesh_config.process_id >= 0 else from_env(
      ENV_PROCESS_ID, "process_id")
  if num is not None and num <= 0:
    raise errors.ConfigError(f"config.mesh.num_processes={num} is invalid: expected a positive "
                     "count of processes (0 = from $JAX_NUM_PROCESSES or auto-detected).")
  if pid is not None and (pid < 0 or (num is not None and pid >= num)):
    raise errors.ConfigError(f"config.mesh.process_id={pid} is invalid: expected 0 <= id < "
                     f"config.mesh.num_processes={num}.")
  address = mesh_config.coordinator_address or environ.get(ENV_COORDINATOR) or None
  return {"coordinator_address": address, "num_processes": num, "process_id": pid}


def maybe_initialize_distributed(mesh_config: ml_collections.ConfigDict) -> bool:
  """Joins the multi-process job if the config or environment asks for one; idempotent.

  Must run before anything else touches JAX's devices (the trainer calls it first). On CPU
  the cross-process collectives use gloo. Returns whether the run is distributed.
  """
  settings = distributed_settings(mesh_config)
  if settings is None:
    return False
  if jax.distributed.is_initialized():
    return True
  # CPU collectives across processes (ignored by GPU/TPU backends). JAX 0.10 defaults to
  # gloo already; set it in case an older default ('none') or a user's choice is unset.
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("jax.distributed.initialize(%s)",
               ", ".join(f"{k}={v!r}" for k, v in settings.items()))
  jax.distributed.initialize(**settings)
  logging.info("Process %d of %d: %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  """A 1-d ("data",) mesh over `config.mesh.data` devices (-1 = all of them); with
  `config.mesh.members` = M > 1, a 2-d ("members", "data") mesh of M rows of
  `config.mesh.data` devices (-1 = all devices / M), over which a run of several members
  splits them (`members_sharding`).

  With several processes a partial mesh takes the same number of devices from each, so
  every process keeps feeding its share of the batch.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  members = mesh_config.get("members", 1)   # a config saved before the key: 1
  if members > 1:
    data = len(devices) // members if mesh_config.data == -1 else mesh_config.data
    if data < 1 or members * data > len(devices):
      raise errors.ConfigError(
          f"config.mesh.members={members} x config.mesh.data={mesh_config.data} needs "
          f"{members * max(data, 1)} devices, but only {len(devices)} are visible.")
    if jax.process_count() > 1:
      raise errors.ConfigError(f"config.mesh.members={members}: a mesh of members is for "
                               "one process for now.")
    return Mesh(np.asarray(devices[:members * data]).reshape(members, data),
                ("members", "data"))
  count = len(devices) if mesh_config.data == -1 else mesh_config.data
  if count > len(devices):
    raise errors.ConfigError(f"config.mesh.data={mesh_config.data} but only {len(devices)} "
                     "devices are visible.")
  processes = jax.process_count()
  if count < len(devices) and processes > 1:
    if count % processes:
      raise errors.ConfigError(f"config.mesh.data={mesh_config.data} must divide by the "
                       f"{processes} processes (each contributes the same number of "
                       "devices), or be -1 for all devices.")
    per_process = count // processes
    devices = [d for p in range(processes)
               for d in [d for d in devices if d.process_index == p][:per_process]]
  return Mesh(np.asarray(devices[:count]), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  size = mesh.shape["data"]
  if batch_size % size:
    raise errors.ConfigError(f"config.train.batch_size={batch_size} must divide by the "
                     f"{size} devices of the 'data' mesh axis (config.mesh.data).")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P("data"))


def members_sharding(mesh: Mesh, batch: bool = False) -> NamedSharding:
  """Of trees with a leading member axis [N, ...] (`training.members`): that axis split
  over the mesh's 'members' axis (replicated on a mesh without one); with `batch`, the
  next (batch) axis split over 'data' too."""
  members = "members" if "members" in mesh.axis_names else None
  return NamedSharding(mesh, P(members, "data") if batch else P(members))


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
  """Indices of the global batch's rows that this process's devices hold, in the order
  `jax.make_array_from_process_local_data` expects them (ascending)."""
  check_batch_size(batch_size, mesh)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted({s[0].indices(batch_size)[:2] for s in index_map.values()})
  return np.concatenate([np.arange(a, b) for a, b in spans])


def put_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """A global host batch (a dict whose values are arrays or tuples of arrays, every one with
  the batch as its leading axis) -> the same tree of global arrays sharded along batch.

  Every process passes the same global batch; each feeds only the rows its own devices
  hold (with one process, all of them).
  """
  leaves, tree = jax.tree.flatten(batch)
  sizes = jax.tree.map(lambda v: np.shape(v)[0], batch)
  if len(set(jax.tree.leaves(sizes))) != 1:
    raise ValueError(f"batch arrays disagree on the batch (leading) size: {sizes}.")
  size = np.shape(leaves[0])[0]
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    check_batch_size(size, mesh)
    if all(isinstance(v, np.ndarray) for v in leaves):
      return _placer(sharding)(batch)
    return jax.device_put(batch, sharding)   # e.g. features already on a device
  rows = process_rows(mesh, size)
  return jax.tree.unflatten(tree, [
      jax.make_array_from_process_local_data(sharding, np.asarray(v)[rows], np.shape(v))
      for v in leaves])


@functools.lru_cache(maxsize=None)
def _placer(sharding: NamedSharding):
  """A jitted identity that places a batch of numpy arrays with `sharding`: the same arrays
  as `jax.device_put(batch, sharding)`, for about a tenth of its host time (it goes
  through jit's C++ dispatch), which the trainer spends on every step."""
  return jax.jit(lambda batch: batch, in_shardings=(sharding,), out_shardings=sharding)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any of them (e.g. a stop signal that
  reached one host: all must stop at the same step, or the next collective hangs)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
