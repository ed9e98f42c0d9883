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
  """A 1-D mesh named `data` over all global devices (or the ones given).

  Devices are ordered by (process, id), so each process's devices hold one contiguous
  block of the batch: process p's slice is rows [p * n / P, (p + 1) * n / P), which is
  what `shard_batch` and the input pipeline assume.
  """
  devices = jax.devices() if devices is None else list(devices)
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
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


def put_global(tree, sharding: jax.sharding.Sharding):
  """Places a pytree whose full value every process holds onto `sharding`.

  With one process this is `jax.device_put`. With several, host values and process-local
  arrays are copied into each addressable shard (`make_array_from_callback`, no
  cross-process check or transfer); arrays that already span the processes are resharded.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _put_one(x, sharding), tree)


def _put_one(x, sharding):
  if isinstance(x, jax.Array):
    if not x.is_fully_addressable:
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = _put_one(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  a = np.asarray(x)
  a = a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def replicate(tree, mesh: Mesh):
  """Places a pytree (the same on every process) fully replicated on every device of the mesh."""
  return put_global(tree, replicated(mesh))


def to_host(x) -> np.ndarray:
  """A global (possibly multi-process) array as numpy, the same on every process.

  Every process must call it (it is a collective when the array spans processes).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def pad_to_multiple(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


_COMPILED: dict = {}


def compiled(fn, mesh: Mesh | None, n_replicated: int, n_batched: int):
  """`jax.jit(fn)` with the first `n_replicated` arguments replicated and the next `n_batched` split
  over the mesh's data axis (outputs split too); cached by value: `fn` must hash by its content
  (a module-level function, or a frozen dataclass of hashable fields such as Flax modules)."""
  key = (fn, mesh, n_replicated, n_batched)
  if key not in _COMPILED:
    if mesh is None:
      _COMPILED[key] = jax.jit(fn)
    else:
      rep, data = replicated(mesh), batch_sharding(mesh)
      _COMPILED[key] = jax.jit(fn, in_shardings=(rep,) * n_replicated + (data,) * n_batched, out_shardings=data)
  return _COMPILED[key]


def map_batches(fn, replicated_args: tuple, batched_args: tuple, *, mesh: Mesh | None, batch_size: int,
                desc: str | None = None):
  """`fn(*replicated_args, *rows)` over chunks of rows of `batched_args`, as numpy, in order.

  The one batched, sharded map of spurjax: each chunk of `batch_size` rows (rounded up to a
  multiple of the devices) is padded by repeating its last row, so one program serves every
  chunk, placed over the mesh's data axis, run through `compiled(fn, ...)`, gathered to the host
  and cut back. Every process passes the full inputs (with several processes each device reads
  its own rows). `replicated_args` are placed once. A progress bar shows when `desc` is given.
  """
  from tqdm import tqdm
  batched_args = tuple(np.asarray(a) for a in batched_args)
  n = len(batched_args[0])
  if any(len(a) != n for a in batched_args):
    raise ValueError(f"map_batches: batched arguments of different lengths {[len(a) for a in batched_args]}")
  devices = 1 if mesh is None else mesh.devices.size
  chunk = pad_to_multiple(max(int(batch_size), 1), devices)
  call = compiled(fn, mesh, len(replicated_args), len(batched_args))
  if mesh is not None:
    replicated_args = replicate(tuple(replicated_args), mesh)
  outs = []
  for start in tqdm(range(0, n, chunk), desc=desc, leave=False,
                    disable=desc is None or jax.process_index() != 0):
    rows = np.arange(start, min(start + chunk, n))
    pad = np.concatenate([rows, np.repeat(rows[-1:], chunk - len(rows))])
    args = tuple(a[pad] for a in batched_args)
    if mesh is not None:
      args = tuple(put_global(a, batch_sharding(mesh)) for a in args)
    out = call(*replicated_args, *args)
    outs.append(jax.tree.map(lambda x: to_host(x)[:len(rows)], out))
  if not outs:
    raise ValueError("map_batches: no rows")
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)
