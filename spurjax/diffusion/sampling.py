"""Text-to-image sampling and mask-guided inpainting, jitted and sharded over the batch.

The model is given as pure callables that all take one `params` pytree first:

  denoise_fn(params, x_t, t, context) -> model output (eps / v / x0, like x_t's latent channels)
  encode_fn(params, image) -> scaled latent     (image NHWC in [-1, 1]); None = pixel space
  decode_fn(params, latent) -> image in [-1, 1] (latent already scaled); None = pixel space

`t` is an int32 vector with one timestep per row of `x_t`. Passing params explicitly
(instead of closing over them) keeps weights out of the compiled program and lets
them be replicated over a mesh. `spurjax.diffusion.pipeline_sampling.pipeline_fns(pipeline)`
builds these callables from a loaded Stable Diffusion pipeline.

Images in and out are float32 NHWC in [0, 1] at the model's resolution. Masks are
(B, H, W) or (B, H, W, 1), 1 = repaint, binarised at 0.5. Every example draws its
noise from `jax.random.fold_in(rng, example_index)`, so results do not depend on
the batch split or the number of devices. The whole denoising loop is one
`lax.scan` inside one `jax.jit` (`spurjax.diffusion.sampling_loop`); `debug_python_loop=True`
runs the same step function eagerly in a Python loop. Classifier-free guidance weights per
step: `spurjax.diffusion.guidance`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from spurjax.diffusion import schedulers
from spurjax.diffusion.sampling_loop import CodecFn, DenoiseFn, Static, dispatch, first_step
from spurjax.errors import SpurjaxError


# ---------------------------------------------------------------- input checks


def _batch_rows(name: str, a, batch: int) -> np.ndarray | jax.Array:
  """`a` with `batch` rows: a single row is broadcast, other counts are an error."""
  a = jnp.asarray(a) if not isinstance(a, np.ndarray) else a
  if a.ndim == 0 or a.shape[0] not in (1, batch):
    raise SpurjaxError(f"{name}: expected {batch} rows (or 1 to broadcast), got shape {tuple(a.shape)}")
  if a.shape[0] == 1 and batch != 1:
    a = jnp.broadcast_to(a, (batch,) + tuple(a.shape[1:]))
  return a


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
      conditional prediction alone (w = 1) at the others (`guidance.guidance_weights`).
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
  st = Static("txt2img", denoise_fn, None, decode_fn, sched, sampler, int(num_steps), float(eta),
              uncond_context is not None, shape[1:])
  return dispatch(st, shape[0], _contexts(context, uncond_context, shape[0]), params=params, rng=rng,
                  guidance_scale=guidance_scale, mesh=mesh, debug_python_loop=debug_python_loop,
                  guidance_interval=guidance_interval)


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
  st = Static(mode, denoise_fn, encode_fn, decode_fn, sched, sampler, int(num_steps), float(eta),
              uncond_context is not None, _latent_shape(encode_fn, params, images.shape[1:]),
              keep_known=keep_known, mask_pool=mask_pool, strength=float(strength))
  inputs = dict(_contexts(context, uncond_context, batch), images=images, masks=masks)
  return dispatch(st, batch, inputs, params=params, rng=rng, guidance_scale=guidance_scale, mesh=mesh,
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
