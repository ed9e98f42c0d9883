"""Device mesh and batch sharding: one data-parallel axis over every global device.

Works unchanged on 1 device, N local devices and several processes (each process
passes only its own slice of the global batch).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over all global devices (or the ones given)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
  """Turns this process's slice of a batch (a pytree of numpy arrays) into global jax.Arrays.

  With one process the slice is the whole batch. The leading dimension of every leaf
  must be divisible by the number of local devices.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  """Places a pytree fully replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch (divisible by the process count)."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {n} processes")
  return global_batch_size // n


def pad_to_multiple(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
