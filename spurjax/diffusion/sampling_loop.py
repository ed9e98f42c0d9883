"""The compiled denoising loop behind `spurjax.diffusion.sampling`: one `lax.scan` inside one `jax.jit`.

`Static` fixes a program (hashable, so equal settings share one compilation); `dispatch` pads the
batch to the mesh, places the inputs, draws every example's initial noise from
`fold_in(rng, example_index)` and runs the loop (or the same step eagerly in a Python loop).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from spurjax import rng as rng_ids
from spurjax import sharding
from spurjax.diffusion import schedulers
from spurjax.diffusion.guidance import guidance_weights
from spurjax.errors import SpurjaxError

DenoiseFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
CodecFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything that fixes the compiled program (hashable)."""
  mode: str  # "txt2img", "blended" or "channels"
  denoise_fn: DenoiseFn
  encode_fn: CodecFn | None
  decode_fn: CodecFn | None
  sched: schedulers.Schedule
  sampler: str
  num_steps: int
  eta: float
  cfg: bool
  latent_shape: tuple[int, ...]  # per example
  keep_known: bool = True
  mask_pool: str = "max"
  strength: float = 1.0  # inpainting: start from the image noised to this fraction of the steps (1: pure noise)


# ---------------------------------------------------------------- pieces of the loop


def _interleave(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B, ...) and (B, ...) -> (2B, ...) as a0, b0, a1, b1, ... (keeps each example's rows together)."""
  return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _mask_to(mask: jax.Array, size: tuple[int, int], how: str) -> jax.Array:
  """Resizes a (B, H, W, 1) binary mask to a latent grid by an integer factor.

  "nearest" takes the top-left pixel of each cell (torch's `interpolate` default,
  what inpainting UNets are trained with); "max" marks a cell if any pixel is masked.
  """
  b, height, width, _ = mask.shape
  h, w = size
  if height % h or width % w or height // h != width // w:
    raise SpurjaxError(f"image size {height}x{width} is not an integer multiple of the latent size {h}x{w}")
  f = height // h
  if how == "nearest":
    return mask[:, ::f, ::f]
  return mask.reshape(b, h, f, w, f, 1).max(axis=(2, 4))


def _example_keys(rng: jax.Array, index: jax.Array) -> jax.Array:
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def _normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


@functools.lru_cache(maxsize=64)
def _plan(st: Static):
  """Step timesteps and abar of the level the known region is re-noised to after each step."""
  ts = schedulers.get_sampler(st.sampler).timesteps(st.sched, st.num_steps)
  next_abar = np.append(schedulers.noise_levels(st.sched, ts[1:]), 1.0)
  return ts, next_abar


def first_step(num_steps: int, strength: float) -> int:
  """The step an inpainting with `strength` starts at (diffusers' img2img / inpainting rule: the last
  int(num_steps x strength) of the steps are run)."""
  run = min(int(num_steps * strength), num_steps)
  if not 0.0 < strength <= 1.0 or run < 1:
    raise SpurjaxError(f"strength={strength} with {num_steps} steps: it must be in (0, 1] and run at least one "
                       "step (num_steps x strength >= 1)")
  return num_steps - run


def _prepare(st: Static, d: dict):
  """Initial (x, sampler state) and the per-batch constants of the loop."""
  params, noise = d["params"], d["noise"]
  aux = {}
  if st.mode != "txt2img":
    images = d["images"] * 2.0 - 1.0
    mask = (d["masks"] >= 0.5).astype(jnp.float32)
    encode = st.encode_fn or (lambda p, x: x)
    z0 = encode(params, images).astype(jnp.float32)
    aux.update(z0=z0, noise=noise, blend=_mask_to(mask, z0.shape[1:3], st.mask_pool))
    if st.mode == "channels":
      masked = encode(params, images * (mask < 0.5)).astype(jnp.float32)
      aux["extra"] = jnp.concatenate([_mask_to(mask, z0.shape[1:3], "nearest"), masked], axis=-1)
  ts, _ = _plan(st)
  start = first_step(len(ts), st.strength)
  if start:  # the whole image noised to the first step's level (inside the mask too)
    x = schedulers.add_noise(st.sched, aux["z0"], noise, int(ts[start]))
  elif st.mode == "blended":
    m = aux["blend"]
    known = schedulers.add_noise(st.sched, aux["z0"], noise, int(ts[0]))
    x = (1.0 - m) * known + m * noise
  else:
    x = noise
  eta_keys = None
  if st.eta > 0:
    eta_keys = jax.vmap(lambda k: jax.random.fold_in(k, rng_ids.DDIM_ETA))(_example_keys(d["rng"], d["index"]))
  state = schedulers.get_sampler(st.sampler).init(st.sched, len(ts), x, eta=st.eta, noise_keys=eta_keys)
  state = schedulers.start_at(state, start)
  ctx = d["context"]
  aux["context"] = _interleave(d["uncond"], ctx) if st.cfg else ctx
  return (x, state), aux


def _body(st: Static, d: dict, aux: dict, carry, i):
  """One denoising step: model (with classifier-free guidance), sampler update, re-blending."""
  x, state = carry
  ts, next_abar = _plan(st)
  t = jnp.asarray(ts, jnp.int32)[i]
  model_in = x if st.mode != "channels" else jnp.concatenate([x, aux["extra"]], axis=-1)
  if st.cfg:
    model_in = _interleave(model_in, model_in)
  tvec = jnp.full((model_in.shape[0],), t, jnp.int32)
  out = st.denoise_fn(d["params"], model_in, tvec, aux["context"]).astype(jnp.float32)
  if out.shape != (model_in.shape[0],) + x.shape[1:]:
    raise SpurjaxError(f"denoise_fn returned shape {out.shape} for samples of shape {x.shape}")
  if st.cfg:
    out = out.reshape((x.shape[0], 2) + x.shape[1:])
    uncond, cond = out[:, 0], out[:, 1]
    out = uncond + d["guidance"][i] * (cond - uncond)
  x, state = schedulers.get_sampler(st.sampler).step(st.sched, state, out, i, x)
  if st.mode == "blended":
    a = jnp.asarray(next_abar, jnp.float32)[i]
    known = jnp.sqrt(a) * aux["z0"] + jnp.sqrt(1.0 - a) * aux["noise"]
    x = (1.0 - aux["blend"]) * known + aux["blend"] * x
  return x, state


def _finish(st: Static, d: dict, aux: dict, x: jax.Array) -> jax.Array:
  if st.mode == "channels" and st.keep_known:
    x = (1.0 - aux["blend"]) * aux["z0"] + aux["blend"] * x
  img = x if st.decode_fn is None else st.decode_fn(d["params"], x)
  return jnp.clip((img.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def _run(st: Static, d: dict) -> jax.Array:
  carry, aux = _prepare(st, d)
  n = len(_plan(st)[0])

  def body(carry, i):
    return _body(st, d, aux, carry, i), None

  (x, _), _ = jax.lax.scan(body, carry, jnp.arange(first_step(n, st.strength), n, dtype=jnp.int32))
  return _finish(st, d, aux, x)


def _run_python(st: Static, d: dict) -> jax.Array:
  carry, aux = _prepare(st, d)
  n = len(_plan(st)[0])
  for i in range(first_step(n, st.strength), n):
    carry = _body(st, d, aux, carry, jnp.int32(i))
  return _finish(st, d, aux, carry[0])


@functools.lru_cache(maxsize=64)
def _compiled(st: Static, mesh: Mesh | None, names: tuple[str, ...]):
  fn = functools.partial(_run, st)
  if mesh is None:
    return jax.jit(fn)
  shardings = {k: _sharding_for(k, mesh) for k in names}
  return jax.jit(fn, in_shardings=(shardings,), out_shardings=_out_sharding(mesh))


def _out_sharding(mesh: Mesh):
  """Split over the batch; replicated when the mesh spans processes, so every process can read it."""
  if len({d.process_index for d in mesh.devices.flat}) > 1:
    return sharding.replicated(mesh)
  return sharding.batch_sharding(mesh)


_REPLICATED = ("params", "rng", "guidance")


@functools.lru_cache(maxsize=32)
def noise_program(shape: tuple[int, ...], mesh: Mesh | None):
  """Initial noise, one draw per example from fold_in(rng, index).

  A separate small program, shared by every sampler / mode with the same latent
  shape (random-bit generation is slow to compile on CPU).
  """
  fn = lambda rng, index: _normal(_example_keys(rng, index), shape)
  if mesh is None:
    return jax.jit(fn)
  batch = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def _sharding_for(name: str, mesh: Mesh):
  return sharding.replicated(mesh) if name in _REPLICATED else sharding.batch_sharding(mesh)


# ---------------------------------------------------------------- padding, placement and dispatch


def _pad_rows(a, rows: int):
  """Repeats the last row so the batch has `rows` rows."""
  extra = rows - a.shape[0]
  if extra == 0:
    return a
  return jnp.concatenate([jnp.asarray(a), jnp.repeat(jnp.asarray(a)[-1:], extra, axis=0)], axis=0)


def dispatch(st: Static, batch: int, inputs: dict, *, params, rng, guidance_scale, mesh, debug_python_loop,
             guidance_interval=None):
  """Runs program `st` on `inputs` ({name: (batch, ...) rows}) padded to the mesh; returns `batch` images."""
  if rng is None:
    raise SpurjaxError("rng is required (e.g. jax.random.key(seed))")
  try:
    scale = float(guidance_scale)
  except (TypeError, ValueError):
    raise SpurjaxError(f"guidance_scale={guidance_scale!r} must be a number") from None
  guidance = jnp.asarray(guidance_weights(_plan(st)[0], scale, guidance_interval))
  devices = 1 if mesh is None else mesh.devices.size
  rows = sharding.pad_to_multiple(batch, devices)
  d = {k: _pad_rows(v, rows) for k, v in inputs.items()}
  d["index"] = jnp.arange(rows, dtype=jnp.int32)
  d.update(params=params, rng=rng, guidance=guidance)
  if mesh is not None:
    d = {k: sharding.put_global(v, _sharding_for(k, mesh)) for k, v in d.items()}
  d["noise"] = noise_program(st.latent_shape, mesh)(d["rng"], d["index"])
  if debug_python_loop:
    out = _run_python(st, d)
  else:
    out = _compiled(st, mesh, tuple(sorted(d)))(d)
  return out[:batch] if rows != batch else out
