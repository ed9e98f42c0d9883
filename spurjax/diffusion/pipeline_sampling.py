"""A loaded pipeline driven through the sampler (`spurjax.diffusion.sampling`).

`pipeline_fns` turns a pipeline's UNet (and VAE, if any) into the pure callables the sampler
takes; `encode_prompts` / `empty_context` give its text embeddings; `sample_images` and
`inpaint_images` run batched text-to-image and inpainting with one prompt per image.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion import sampling, schedulers
from spurjax.diffusion.sampling_loop import CodecFn, DenoiseFn
from spurjax.errors import SpurjaxError


# ---------------------------------------------------------------- callables and text embeddings


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
  """The callables and params of a loaded pipeline, ready for `sampling.sample` / `sampling.inpaint_*`.

  Use as `sampling.sample(fns.denoise, sched, params=fns.params, decode_fn=fns.decode, ...)`.
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


# ---------------------------------------------------------------- batched text-to-image and inpainting


def sample_images(pipeline, prompts: Sequence[str], *, num_steps: int = 50, guidance_scale: float = 3.0,
                  seed: int = 0, sampler: str = "ddim", mesh=None, batch_size: int = 64) -> np.ndarray:
  """Text-to-image samples (N, H, W, 3) float32 in [0, 1], one per prompt.

  An inpainting UNet draws from text alone with the whole image masked (what it is trained on).
  """
  fns = pipeline_fns(pipeline)
  cfg = dict(pipeline.unet.config)
  side = int(cfg.get("sample_size") or 32)
  uncond = empty_context(pipeline) if guidance_scale != 1.0 else None
  sched = schedulers.make_schedule(pipeline.scheduler_config)
  outs = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    ctx = encode_prompts(pipeline, chunk)
    rng = jax.random.fold_in(jax.random.key(seed), start)
    if pipeline.is_inpaint:
      down = fns.downscale
      blank = np.zeros((len(chunk), side * down, side * down, 3), np.float32)
      imgs = sampling.inpaint_channels(fns.denoise, sched, images=blank, masks=np.ones(blank.shape[:3], np.float32),
                                       context=ctx, uncond_context=uncond, guidance_scale=guidance_scale,
                                       num_steps=num_steps, rng=rng, sampler=sampler, params=fns.params,
                                       encode_fn=fns.encode, decode_fn=fns.decode, mesh=mesh)
    else:
      imgs = sampling.sample(fns.denoise, sched, shape=(len(chunk), side, side, fns.latent_channels), context=ctx,
                             uncond_context=uncond, guidance_scale=guidance_scale, num_steps=num_steps,
                             rng=rng, sampler=sampler, params=fns.params, decode_fn=fns.decode, mesh=mesh)
    outs.append(np.asarray(imgs))
  return np.concatenate(outs)


def inpaint_images(pipeline, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], *, num_steps: int = 50,
                   guidance_scale: float = 3.0, seed: int = 0, sampler: str = "ddim", mesh=None,
                   batch_size: int = 64) -> np.ndarray:
  """Repaints `masks` (N, H, W), 1 = repaint, of float images (N, H, W, 3) in [0, 1] at the model's resolution,
  one prompt per image: through the mask channels for an inpainting UNet, by blended latents otherwise."""
  fns = pipeline_fns(pipeline)
  uncond = empty_context(pipeline) if guidance_scale != 1.0 else None
  sched = schedulers.make_schedule(pipeline.scheduler_config)
  run = sampling.inpaint_channels if pipeline.is_inpaint else sampling.inpaint_blended
  outs = []
  for start in range(0, len(prompts), batch_size):
    sl = slice(start, start + batch_size)
    ctx = encode_prompts(pipeline, list(prompts[sl]))
    out = run(fns.denoise, sched, images=np.asarray(images[sl], np.float32), masks=np.asarray(masks[sl], np.float32),
              context=ctx, uncond_context=uncond, guidance_scale=guidance_scale, num_steps=num_steps,
              rng=jax.random.fold_in(jax.random.key(seed), start), sampler=sampler, params=fns.params,
              encode_fn=fns.encode, decode_fn=fns.decode, mesh=mesh)
    outs.append(np.asarray(out))
  return np.concatenate(outs)
