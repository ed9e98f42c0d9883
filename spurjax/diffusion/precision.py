"""The diffusion model's compute precision (`diffusion.dtype`) and its weights' place on the devices.

`prepare(pipeline, dtype, mesh)` gives the pipeline the stages run, with, per component:

  UNet, VAE      activations in `dtype`; weights stored in `dtype` as well (bfloat16 halves their
                 memory, as half-precision diffusers pipelines store theirs), so matmuls and
                 convolutions read them without a cast. Their outputs stay float32.
  text encoder   weights and activations float32 whatever `dtype`: textual inversion trains rows of
                 its token table, and prompt encoding is a small share of the work. The UNet casts the
                 text embeddings it is given to `dtype`.

With float32 (the CPU default, and what the parity tests use) every weight is kept as loaded.
Then every weight is put on the devices once, replicated over the mesh (`spurjax.sharding.replicate`;
without a mesh, on the default device), so the jitted calls of a stage (prompt encoding, sampling
chunks, DiffEdit, attention maps, textual inversion) take device arrays and upload nothing.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.errors import SpurjaxError

DTYPES = ("auto", "float32", "bfloat16")
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def resolve_dtype(name, backend: str | None = None, key: str = "diffusion.dtype") -> str:
  """"float32" or "bfloat16" for a `diffusion.dtype` value; "auto" is bfloat16 on a GPU or TPU
  (`backend`, default jax's) and float32 on the CPU. Another value is a one-line SpurjaxError."""
  value = str(name)
  if value not in DTYPES:
    raise SpurjaxError(f"config {key}={value!r}: unknown value ({', '.join(DTYPES)})")
  if value == "auto":
    backend = (backend or jax.default_backend()).lower()
    return "bfloat16" if backend in _ACCELERATORS else "float32"
  return value


def _module(module, dtype):
  if module is None or np.dtype(getattr(module, "dtype", jnp.float32)) == np.dtype(dtype):
    return module
  return module.clone(parent=None, dtype=dtype)


def _stored(params, dtype):
  """Floating leaves of `params` as `dtype` (host numpy; device arrays come back to the host first)."""
  if params is None:
    return None

  def cast(a):
    if np.dtype(a.dtype) == np.dtype(dtype) or not jnp.issubdtype(a.dtype, jnp.floating):
      return a
    return np.asarray(a).astype(dtype)
  return jax.tree.map(cast, params)


def with_dtype(pipeline, dtype):
  """`pipeline` computing in `dtype` ("float32" / "bfloat16"), stored as the module docstring says."""
  dt = jnp.dtype(dtype)
  return dataclasses.replace(
      pipeline, unet=_module(pipeline.unet, dt), unet_params=_stored(pipeline.unet_params, dt),
      vae=_module(pipeline.vae, dt), vae_params=_stored(pipeline.vae_params, dt),
      text_encoder=_module(pipeline.text_encoder, jnp.float32), text_params=_stored(pipeline.text_params, jnp.float32))


_PARAMS = ("unet_params", "vae_params", "text_params")


def place(pipeline, mesh):
  """`pipeline` with its weights on the devices: replicated over `mesh` (or on the default device)."""
  from spurjax import sharding as shd
  parts = {k: getattr(pipeline, k) for k in _PARAMS if getattr(pipeline, k) is not None}
  placed = shd.replicate(parts, mesh) if mesh is not None else jax.device_put(parts)
  return dataclasses.replace(pipeline, **placed)


def prepare(pipeline, dtype, mesh):
  """`with_dtype` then `place`: the pipeline as the stages run it."""
  return place(with_dtype(pipeline, dtype), mesh)


def fresh_copy(tree):
  """`tree` with its device arrays copied into new buffers (host arrays as they are): for a step that
  donates its inputs, so that it does not consume the weights a pipeline keeps on the devices."""
  leaves, treedef = jax.tree.flatten(tree)
  on_device = [i for i, a in enumerate(leaves) if isinstance(a, jax.Array)]
  if on_device:
    copies = jax.device_put([leaves[i] for i in on_device], [leaves[i].sharding for i in on_device],
                            may_alias=False)
    for i, a in zip(on_device, copies):
      leaves[i] = a
  return jax.tree.unflatten(treedef, leaves)
