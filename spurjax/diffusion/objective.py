"""What a diffusion model is trained on: the modules and schedule (`Model`) and the noise-prediction loss.

`diffusion_loss` is the DDPM objective (epsilon / v / x0 target per the scheduler config), with
the inpainting input [x_t, mask, masked x0], optional mask / object loss weights and min-SNR
weighting. The optimiser, state, step and loop are in `spurjax.diffusion.train`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from spurjax.diffusion import schedulers
from spurjax.diffusion.vae import sample_latent
from spurjax.errors import SpurjaxError


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """Modules (flax) and noise schedule; params live separately in {"unet", "text"[, "vae"]}."""
  unet: Any
  text_encoder: Any
  vae: Any
  latent_scale: float
  sched: schedulers.Schedule

  @property
  def inpaint(self) -> bool:
    """True for an inpainting UNet: its input is [x_t, mask, masked x0] (2C + 1 channels)."""
    cfg = dict(getattr(self.unet, "config", {}) or {})
    return int(cfg.get("in_channels", 4)) == 2 * int(cfg.get("out_channels", 4)) + 1

  @classmethod
  def from_pipeline(cls, pipeline) -> "Model":
    if pipeline.unet is None or pipeline.text_encoder is None or pipeline.scheduler_config is None:
      raise SpurjaxError(f"{pipeline.path or 'pipeline'}: training needs the unet, text_encoder and scheduler")
    vae = pipeline.vae if pipeline.vae_params is not None else None
    return cls(pipeline.unet, pipeline.text_encoder, vae, float(pipeline.latent_scale),
               schedulers.make_schedule(pipeline.scheduler_config))


def pipeline_params(pipeline) -> dict:
  """The param tree the step trains: {"unet", "text"} plus "vae" for latent models.

  Weights the pipeline keeps on the devices are copied there (new buffers, no host transfer): the
  train step donates its state, which must not consume the pipeline's own weights.
  """
  from spurjax.diffusion.precision import fresh_copy
  params = {"unet": pipeline.unet_params, "text": pipeline.text_params}
  if pipeline.vae_params is not None:
    params["vae"] = pipeline.vae_params
  return fresh_copy(params)


def to_model_input(pixels: jax.Array) -> jax.Array:
  """uint8 NHWC -> float32 in [-1, 1]."""
  return pixels.astype(jnp.float32) / 127.5 - 1.0


def encode_images(model: Model, params, images: jax.Array, rng: jax.Array) -> jax.Array:
  """x0 the UNet denoises: scaled VAE posterior samples, or the images themselves (pixel space)."""
  if model.vae is None:
    return images
  mean, logvar = model.vae.apply({"params": params["vae"]}, images, method="encode")
  return sample_latent(rng, mean, logvar) * model.latent_scale


def _mask_to_grid(masks: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, H, W) masks -> (B, h, w, 1) on the latent grid (top-left pixel of each cell, as sampling does)."""
  f = masks.shape[1] // size[0]
  return masks[:, ::f, ::f][..., None] if f > 1 else masks[..., None]


def min_snr_weight(sched: schedulers.Schedule, t: jax.Array, gamma: float) -> jax.Array:
  """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's prediction target, per example."""
  abar = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t]
  snr = abar / (1.0 - abar)
  clipped = jnp.minimum(snr, gamma)
  if sched.prediction_type == "epsilon":
    return clipped / snr
  if sched.prediction_type == "v_prediction":
    return clipped / (snr + 1.0)
  return clipped


def diffusion_loss(model: Model, params, pixels: jax.Array, ids: jax.Array, rng: jax.Array,
                   cond_drop: float = 0.0, uncond_ids: jax.Array | None = None, masks: jax.Array | None = None,
                   mask_weight: float = 1.0, min_snr_gamma: float = 0.0, objects: jax.Array | None = None,
                   object_weight: float = 1.0, object_t_max: float = 1.0) -> jax.Array:
  """Mean squared error of the UNet's prediction against the scheduler's training target.

  An inpainting UNet (`model.inpaint`) gets [x_t, mask, masked x0] as in SD-2-inpainting, the
  masked x0 being the encoding of image * (1 - mask); `masks` (B, H, W) float, 1 = repaint, at
  the pixel resolution; None means the full image is masked (plain text-to-image training, also
  what textual inversion uses). `mask_weight` multiplies the loss inside the mask (the loss is
  normalised by the mean weight); `min_snr_gamma` > 0 applies min-SNR-gamma weighting.
  `objects` (B, H, W), 1 = object pixel, with `object_weight` multiplies the loss on the objects
  (whatever the mask), so that objects a few percent of the image are not drowned by background;
  only at timesteps below `object_t_max` x the number of training timesteps (1: all), where the
  noisy sample already shows where the object is (at higher noise a weighted MSE's optimum, the
  weight-tilted mean, paints object colours wherever the object might be).
  """
  k_vae, k_t, k_noise, k_drop, k_vae2 = jax.random.split(rng, 5)
  images = to_model_input(pixels)
  x0 = jax.lax.stop_gradient(encode_images(model, params, images, k_vae))
  b = x0.shape[0]
  if cond_drop > 0 and uncond_ids is not None:
    drop = jax.random.bernoulli(k_drop, cond_drop, (b, 1))
    ids = jnp.where(drop, uncond_ids[None, :], ids)
  context = model.text_encoder.apply({"params": params["text"]}, ids)
  t = schedulers.random_timesteps(model.sched, k_t, b)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  x_t = schedulers.add_noise(model.sched, x0, noise, t)
  grid = None
  if model.inpaint:
    pix_mask = jnp.ones(images.shape[:3], jnp.float32) if masks is None else masks.astype(jnp.float32)
    grid = _mask_to_grid(pix_mask, x0.shape[1:3])
    if model.vae is None:
      masked = images * (1.0 - pix_mask[..., None])
    else:
      masked = encode_images(model, params, images * (1.0 - pix_mask[..., None]), k_vae2)
    x_in = jnp.concatenate([x_t, grid, jax.lax.stop_gradient(masked)], axis=-1)
  else:
    x_in = x_t
  out = model.unet.apply({"params": params["unet"]}, x_in, t, context)
  target = schedulers.training_target(model.sched, x0, noise, t)
  err = jnp.square(out.astype(jnp.float32) - target)
  w = None
  if grid is not None and mask_weight != 1.0:
    w = 1.0 + (mask_weight - 1.0) * grid
  if objects is not None and object_weight != 1.0:
    obj = _mask_to_grid(objects.astype(jnp.float32), x0.shape[1:3])
    if object_t_max < 1.0:
      low = t < int(round(object_t_max * model.sched.num_train_timesteps))
      obj = obj * low[:, None, None, None].astype(jnp.float32)
    w = (1.0 if w is None else w) + (object_weight - 1.0) * obj
  if w is not None:
    per_example = jnp.mean(err * w, axis=(1, 2, 3)) / jnp.mean(w, axis=(1, 2, 3))
  else:
    per_example = jnp.mean(err, axis=(1, 2, 3))
  if min_snr_gamma > 0:
    per_example = per_example * min_snr_weight(model.sched, t, float(min_snr_gamma))
  return jnp.mean(per_example)
