"""Text-to-image sampling and mask-guided inpainting, jitted and sharded over the batch.

The model is given as pure callables that all take one `params` pytree first:

  denoise_fn(params, x_t, t, context) -> model output (eps / v / x0, like x_t's latent channels)
  encode_fn(params, image) -> scaled latent     (image NHWC in [-1, 1]); None = pixel space
  decode_fn(params, latent) -> image in [-1, 1] (latent already scaled); None = pixel space

`t` is an int32 vector with one timestep per row of `x_t`. Passing params explicitly
(instead of closing over them) keeps weights out of the compiled program and lets
them be replicated over a mesh. `pipeline_fns(pipeline)` builds these callables
from a loaded Stable Diffusion pipeline.

Images in and out are float32 NHWC in [0, 1] at the model's resolution. Masks are
(B, H, W) or (B, H, W, 1), 1 = repaint, binarised at 0.5. Every example draws its
noise from `jax.random.fold_in(rng, example_index)`, so results do not depend on
the batch split or the number of devices. The whole denoising loop is one
`lax.scan` inside one `jax.jit`; `debug_python_loop=True` runs the same step
function eagerly in a Python loop.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from spurjax import rng as rng_ids
from spurjax import sharding
from spurjax.diffusion import schedulers
from spurjax.errors import SpurjaxError

DenoiseFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
CodecFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Static:
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
def _plan(st: _Static):
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


def _prepare(st: _Static, d: dict):
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


def _body(st: _Static, d: dict, aux: dict, carry, i):
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


def _finish(st: _Static, d: dict, aux: dict, x: jax.Array) -> jax.Array:
  if st.mode == "channels" and st.keep_known:
    x = (1.0 - aux["blend"]) * aux["z0"] + aux["blend"] * x
  img = x if st.decode_fn is None else st.decode_fn(d["params"], x)
  return jnp.clip((img.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def _run(st: _Static, d: dict) -> jax.Array:
  carry, aux = _prepare(st, d)
  n = len(_plan(st)[0])

  def body(carry, i):
    return _body(st, d, aux, carry, i), None

  (x, _), _ = jax.lax.scan(body, carry, jnp.arange(first_step(n, st.strength), n, dtype=jnp.int32))
  return _finish(st, d, aux, x)


def _run_python(st: _Static, d: dict) -> jax.Array:
  carry, aux = _prepare(st, d)
  n = len(_plan(st)[0])
  for i in range(first_step(n, st.strength), n):
    carry = _body(st, d, aux, carry, jnp.int32(i))
  return _finish(st, d, aux, carry[0])


@functools.lru_cache(maxsize=64)
def _compiled(st: _Static, mesh: Mesh | None, names: tuple[str, ...]):
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
def _noise_program(shape: tuple[int, ...], mesh: Mesh | None):
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


# ---------------------------------------------------------------- input checks and dispatch


def _batch_rows(name: str, a, batch: int) -> np.ndarray | jax.Array:
  """`a` with `batch` rows: a single row is broadcast, other counts are an error."""
  a = jnp.asarray(a) if not isinstance(a, np.ndarray) else a
  if a.ndim == 0 or a.shape[0] not in (1, batch):
    raise SpurjaxError(f"{name}: expected {batch} rows (or 1 to broadcast), got shape {tuple(a.shape)}")
  if a.shape[0] == 1 and batch != 1:
    a = jnp.broadcast_to(a, (batch,) + tuple(a.shape[1:]))
  return a


def _pad_rows(a, rows: int):
  """Repeats the last row so the batch has `rows` rows."""
  extra = rows - a.shape[0]
  if extra == 0:
    return a
  return jnp.concatenate([jnp.asarray(a), jnp.repeat(jnp.asarray(a)[-1:], extra, axis=0)], axis=0)


def check_guidance_interval(interval) -> tuple[float, float] | None:
  """None / () (guidance at every step) or (t_min, t_max) with 0 <= t_min <= t_max, as floats."""
  if interval is None or (isinstance(interval, (tuple, list)) and len(interval) == 0):
    return None
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    raise SpurjaxError(f"guidance_interval={interval!r} must be () or two timesteps (t_min, t_max)") from None
  if not 0.0 <= lo <= hi:
    raise SpurjaxError(f"guidance_interval={interval!r} must satisfy 0 <= t_min <= t_max")
  return lo, hi


def guidance_weights(timesteps, guidance_scale: float, interval=None) -> np.ndarray:
  """The CFG weight of each step: `guidance_scale` at timesteps inside `interval` (inclusive), 1 (the
  conditional prediction alone) outside; every step without an interval. Guidance limited to the middle
  noise levels keeps more of the samples' diversity (Kynkaanniemi et al., 2024)."""
  ts = np.asarray(timesteps, np.float64)
  interval = check_guidance_interval(interval)
  if interval is None:
    return np.full(ts.shape, guidance_scale, np.float32)
  inside = (ts >= interval[0]) & (ts <= interval[1])
  return np.where(inside, guidance_scale, 1.0).astype(np.float32)


def _dispatch(st: _Static, batch: int, inputs: dict, *, params, rng, guidance_scale, mesh, debug_python_loop,
              guidance_interval=None):
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
  d["noise"] = _noise_program(st.latent_shape, mesh)(d["rng"], d["index"])
  if debug_python_loop:
    out = _run_python(st, d)
  else:
    out = _compiled(st, mesh, tuple(sorted(d)))(d)
  return out[:batch] if rows != batch else out


def _contexts(context, uncond_context, batch: int) -> dict:
  out = {"context": _batch_rows("context", context, batch)}
  if uncond_context is not None:
    out["uncond"] = _batch_rows("uncond_context", uncond_context, batch)
    if tuple(out["uncond"].shape[1:]) != tuple(out["context"].shape[1:]):
      raise SpurjaxError(f"uncond_context shape {tuple(out['uncond'].shape)} does not match context shape "
                         f"{tuple(out['context'].shape)}")
  return out


def _check_images(images, masks) -> tuple[Any, Any]:
  images = np.asarray(images, np.float32) if not isinstance(images, jax.Array) else images.astype(jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise SpurjaxError(f"images: expected float NHWC (B, H, W, C), got shape {tuple(images.shape)}")
  lo, hi = float(images.min()), float(images.max())
  if lo < -1e-3 or hi > 1 + 1e-3:
    raise SpurjaxError(f"images: values must be un-normalised RGB in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
  masks = jnp.asarray(masks, jnp.float32)
  if masks.ndim == 3:
    masks = masks[..., None]
  if masks.ndim != 4 or masks.shape[-1] != 1 or masks.shape[1:3] != images.shape[1:3]:
    raise SpurjaxError(f"masks: expected (B, H, W) or (B, H, W, 1) matching images {tuple(images.shape)}, "
                       f"got {tuple(masks.shape)}")
  masks = _batch_rows("masks", masks, images.shape[0])
  return images, masks


# ---------------------------------------------------------------- public API


def sample(denoise_fn: DenoiseFn, sched: schedulers.Schedule, *, shape: Sequence[int], context,
           uncond_context=None, guidance_scale: float = 7.5, num_steps: int = 50, rng: jax.Array,
           sampler: str = "ddim", eta: float = 0.0, params: Any = None, decode_fn: CodecFn | None = None,
           mesh: Mesh | None = None, debug_python_loop: bool = False, guidance_interval=None) -> jax.Array:
  """Text-to-image: denoises noise of `shape` = (B, h, w, c) latents and decodes it.

  Args:
    denoise_fn: (params, x_t, t, context) -> model output.
    sched: the model's noise schedule.
    shape: latent batch shape (the image shape in pixel space).
    context: (B or 1, L, D) text embeddings.
    uncond_context: (B or 1, L, D) empty-prompt embeddings; None disables classifier-free guidance.
    guidance_scale: CFG weight w in uncond + w (cond - uncond).
    guidance_interval: None, or (t_min, t_max): guidance only at timesteps in [t_min, t_max], the
      conditional prediction alone (w = 1) at the others (`guidance_weights`).
    num_steps: sampler steps.
    rng: PRNG key; example b uses fold_in(rng, b).
    sampler: "ddim" or "dpmpp_2m".
    eta: DDIM stochasticity (0 = deterministic).
    params: pytree passed to the callables (replicated over `mesh`).
    decode_fn: latent -> image in [-1, 1]; None for pixel-space models.
    mesh: optional `sharding.make_mesh()`; the batch is split over its `data` axis. Every
      process passes the same full inputs (and calls this); with several processes the
      result is replicated, so each can read all of it.
    debug_python_loop: run the steps eagerly in a Python loop instead of one compiled scan.

  Returns:
    float32 (B, H, W, C) images in [0, 1].
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != 4 or min(shape) < 1:
    raise SpurjaxError(f"shape={shape} must be a positive (B, h, w, c) latent shape")
  schedulers.get_sampler(sampler)
  st = _Static("txt2img", denoise_fn, None, decode_fn, sched, sampler, int(num_steps), float(eta),
               uncond_context is not None, shape[1:])
  return _dispatch(st, shape[0], _contexts(context, uncond_context, shape[0]), params=params, rng=rng,
                   guidance_scale=guidance_scale, mesh=mesh, debug_python_loop=debug_python_loop,
                   guidance_interval=guidance_interval)


def _latent_shape(encode_fn, params, image_shape) -> tuple[int, ...]:
  """Per-example latent shape of `encode_fn` (abstract evaluation, cached per signature)."""
  if encode_fn is None:
    return tuple(image_shape)
  leaves, treedef = jax.tree.flatten(params)
  signature = (treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves))
  return _latent_shape_cached(encode_fn, signature, tuple(image_shape), params)


_LATENT_SHAPES: dict = {}


def _latent_shape_cached(encode_fn, signature, image_shape, params):
  key = (encode_fn, signature, image_shape)
  if key not in _LATENT_SHAPES:
    image = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
    out = jax.eval_shape(encode_fn, params, image)
    _LATENT_SHAPES[key] = tuple(out.shape[1:])
  return _LATENT_SHAPES[key]


def _inpaint(mode: str, denoise_fn, sched, images, masks, context, uncond_context, guidance_scale, num_steps,
             rng, sampler, eta, params, encode_fn, decode_fn, mesh, debug_python_loop, keep_known, mask_pool,
             strength, guidance_interval):
  if (encode_fn is None) != (decode_fn is None):
    raise SpurjaxError("give both encode_fn and decode_fn (latent model) or neither (pixel-space model)")
  if mask_pool not in ("max", "nearest"):
    raise SpurjaxError(f"mask_pool={mask_pool!r} must be 'max' or 'nearest'")
  first_step(len(schedulers.get_sampler(sampler).timesteps(sched, int(num_steps))), float(strength))
  images, masks = _check_images(images, masks)
  batch = images.shape[0]
  st = _Static(mode, denoise_fn, encode_fn, decode_fn, sched, sampler, int(num_steps), float(eta),
               uncond_context is not None, _latent_shape(encode_fn, params, images.shape[1:]),
               keep_known=keep_known, mask_pool=mask_pool, strength=float(strength))
  inputs = dict(_contexts(context, uncond_context, batch), images=images, masks=masks)
  return _dispatch(st, batch, inputs, params=params, rng=rng, guidance_scale=guidance_scale, mesh=mesh,
                   debug_python_loop=debug_python_loop, guidance_interval=guidance_interval)


def inpaint_blended(denoise_fn: DenoiseFn, sched: schedulers.Schedule, *, images, masks, context,
                    uncond_context=None, guidance_scale: float = 7.5, num_steps: int = 50, rng: jax.Array,
                    sampler: str = "ddim", eta: float = 0.0, params: Any = None,
                    encode_fn: CodecFn | None = None, decode_fn: CodecFn | None = None,
                    mesh: Mesh | None = None, debug_python_loop: bool = False,
                    mask_pool: str = "max", strength: float = 1.0, guidance_interval=None) -> jax.Array:
  """Inpainting with a plain (4-channel) model by blended latents.

  Noise enters only inside the mask M (resized to the latent grid; "max" pooling
  marks every latent cell that holds a masked pixel). After every step the known
  region is reset to the known latents noised to the next step's level,
  z = (1 - M) * noised_known + M * z, and after the last step to the exact known
  latents. Arguments as in `sample`, plus `images` (B, H, W, 3) in [0, 1] and
  `masks` (B, H, W[, 1]) with 1 = repaint. With `strength` < 1 sampling starts from the image
  noised to the level of step `first_step(num_steps, strength)` and runs the remaining steps
  (diffusers' inpainting `strength`), so the repainted region keeps the image's coarse layout
  and colours. `guidance_interval` as in `sample`.
  """
  return _inpaint("blended", denoise_fn, sched, images, masks, context, uncond_context, guidance_scale,
                  num_steps, rng, sampler, eta, params, encode_fn, decode_fn, mesh, debug_python_loop, True,
                  mask_pool, strength, guidance_interval)


def inpaint_channels(denoise_fn: DenoiseFn, sched: schedulers.Schedule, *, images, masks, context,
                     uncond_context=None, guidance_scale: float = 7.5, num_steps: int = 50, rng: jax.Array,
                     sampler: str = "ddim", eta: float = 0.0, params: Any = None,
                     encode_fn: CodecFn | None = None, decode_fn: CodecFn | None = None,
                     mesh: Mesh | None = None, debug_python_loop: bool = False, keep_known: bool = True,
                     mask_pool: str = "max", strength: float = 1.0, guidance_interval=None) -> jax.Array:
  """Inpainting with an inpainting model (SD-inpainting, 9 input channels).

  The model sees concat([z_t, mask, masked_image_latents]) on the channel axis,
  where the mask is nearest-resized to the latent grid and the masked image is
  image * (mask < 0.5) in [-1, 1]. Sampling starts from pure noise, or with `strength` < 1
  from the image noised to step `first_step(num_steps, strength)` (as `inpaint_blended`). With
  `keep_known` the final latents outside the (pooled) mask are replaced by the
  known latents before decoding, so the background is kept up to the VAE's error.
  `guidance_interval` as in `sample`.
  """
  return _inpaint("channels", denoise_fn, sched, images, masks, context, uncond_context, guidance_scale,
                  num_steps, rng, sampler, eta, params, encode_fn, decode_fn, mesh, debug_python_loop,
                  keep_known, mask_pool, strength, guidance_interval)


# ---------------------------------------------------------------- adapters for a loaded pipeline


@dataclasses.dataclass(frozen=True, eq=False)
class _UNetDenoise:
  unet: Any

  def __call__(self, params, x, t, context):
    return self.unet.apply({"params": params["unet"]}, x, t, context)


@dataclasses.dataclass(frozen=True, eq=False)
class _VaeEncode:
  vae: Any
  scaling_factor: float

  def __call__(self, params, images):
    mean, _ = self.vae.apply({"params": params["vae"]}, images, method="encode")
    return mean * self.scaling_factor


@dataclasses.dataclass(frozen=True, eq=False)
class _VaeDecode:
  vae: Any
  scaling_factor: float

  def __call__(self, params, latents):
    return self.vae.apply({"params": params["vae"]}, latents / self.scaling_factor, method="decode")


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """The callables and params of a loaded pipeline, ready for `sample` / `inpaint_*`.

  Use as `sample(fns.denoise, sched, params=fns.params, decode_fn=fns.decode, ...)`.
  `encode` / `decode` are None for pixel-space models (no VAE). Latents are the VAE
  posterior mean times `scaling_factor`.
  """
  denoise: DenoiseFn
  encode: CodecFn | None
  decode: CodecFn | None
  params: Any
  in_channels: int
  latent_channels: int
  downscale: int


_ADAPTERS: dict = {}


def pipeline_fns(pipeline) -> ModelFns:
  """`ModelFns` for a loaded pipeline (needs unet, unet_params, vae, vae_params).

  The same callables are returned for the same unet / vae modules, so repeated
  calls reuse compiled programs.
  """
  unet, vae = pipeline.unet, getattr(pipeline, "vae", None)
  if getattr(pipeline, "vae_params", None) is None:
    vae = None
  key = (id(unet), id(vae))
  hit = _ADAPTERS.get(key)
  if hit is None or hit[0] is not unet or hit[1] is not vae:
    if vae is None:
      fns = (_UNetDenoise(unet), None, None)
    else:
      scale = float(getattr(pipeline, "latent_scale", None) or vae.config.get("scaling_factor", 0.18215))
      fns = (_UNetDenoise(unet), _VaeEncode(vae, scale), _VaeDecode(vae, scale))
    hit = _ADAPTERS[key] = (unet, vae, fns)
  params = {"unet": pipeline.unet_params}
  if vae is not None:
    params["vae"] = pipeline.vae_params
  cfg = dict(unet.config)
  in_ch = int(cfg.get("in_channels", 4))
  out_ch = int(cfg.get("out_channels", 4))
  down = 1 if vae is None else 2 ** (len(vae.config.get("block_out_channels", [0])) - 1)
  return ModelFns(*hit[2], params=params, in_channels=in_ch, latent_channels=out_ch, downscale=down)


@functools.partial(jax.jit, static_argnums=0)
def _text_forward(text_encoder, params, ids):
  return text_encoder.apply({"params": params}, ids)


def encode_prompts(pipeline, prompts: str | Sequence[str]) -> jax.Array:
  """Text embeddings (B, L, D): prompts tokenized to the tokenizer's max length, then the text encoder."""
  from spurjax.diffusion import tokenizer as tok
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise SpurjaxError("prompts must be a non-empty list of strings")
  ids = tok.encode(pipeline.tokenizer, prompts)
  out = _text_forward(pipeline.text_encoder, pipeline.text_params, jnp.asarray(ids))
  return out[0] if isinstance(out, tuple) else out


def empty_context(pipeline) -> jax.Array:
  """The empty-prompt embedding (1, L, D) used as the unconditional branch of CFG."""
  return encode_prompts(pipeline, [""])
