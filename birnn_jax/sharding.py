"""Data parallelism with jax.sharding: a ("data",) mesh, batches split along it, the train
state replicated."""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  devices = jax.devices()
  count = len(devices) if mesh_config.data == -1 else mesh_config.data
  if count > len(devices):
    raise ValueError(f"config.mesh.data={mesh_config.data} but only {len(devices)} "
                     "devices are visible.")
  return Mesh(np.asarray(devices[:count]), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  size = mesh.shape["data"]
  if batch_size % size:
    raise ValueError(f"config.train.batch_size={batch_size} must divide by the "
                     f"{size} devices of the 'data' mesh axis.")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """A global host batch -> arrays sharded along batch (each process feeds its own rows)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  rows = lambda a: np.array_split(a, jax.process_count())[jax.process_index()]
  return {k: jax.make_array_from_process_local_data(sharding, rows(v), v.shape)
          for k, v in batch.items()}
