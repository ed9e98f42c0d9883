"""DiffEdit-style contrast masks: where does the model's prediction change with the class prompt?

Couairon et al., "DiffEdit" (ICLR 2023); diffusers' `StableDiffusionDiffEditPipeline.generate_mask`.
The image is noised to a middle strength; the model predicts the noise (or v, or x0) once
with the image's own class prompt and once with another class's prompt, over several noise
draws; |difference| averaged over the draws and channels is large where the object would
change and small on the background. The map is divided by its mean (per image),
optionally smoothed, thresholded and cleaned by a morphological closing, and optionally
replaced by its grown bounding box (or the square around that box).

Optional colour refinement (`Settings.refine`): at a few pixels per object the contrast map is
blurry (it also fires where the other class's object would be drawn), so its threshold alone
gives masks about 1.3 times the object's area. Pixels far above the mean (> `refine_high`) are
taken as sure object, pixels below `refine_low` as sure background, and every pixel in between
takes the majority label of its `refine_k` nearest sure pixels in (RGB, `refine_xy` x position)
space, in the spirit of seeded segmentation such as GrabCut. With the shipped prior on the
built-in benchmark, mean IoU against the true masks: 0.44 -> 0.74-0.76 on the images DDB selects
(the best plain threshold of a grid reached 0.60), 0.39 -> 0.61 on `bench prior`'s random ones.

For a fixed x_t, the eps, v and x0 predictions differ between prompts by per-timestep
constant factors, so after the division by the mean the map does not depend on the
prediction type.

An inpainting UNet ([x_t, mask, masked image] input) is run with the whole image masked:
it sees only x_t, as in text-to-image, and the prompt alone decides what it predicts.

Entry point: `contrast_masks` (pure; jitted once per static configuration) and the
adapter `pipeline_contrast_masks` for a loaded pipeline.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion import schedulers
from spurjax.errors import SpurjaxError

DenoiseFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Settings:
  """The static settings of a mask computation (hashable: one compiled program each)."""
  strength: float = 0.5        # noise level as a fraction of the training timesteps
  n_draws: int = 10            # noise draws averaged
  threshold: float = 1.5       # keep pixels above threshold x the map's mean (DiffEdit: 0.5 x clamp 3 x mean)
  smooth: int = 1              # box-filter radius (px) applied to the map before thresholding; 0 = none
  close: int = 1               # morphological closing radius (px) of the binary mask; 0 = none
  box: str = "none"            # "none" | "box" (the mask's bounding box) | "square" (the square around it)
  box_grow: int = 0            # pixels added on every side of the box
  inpaint: bool = False        # the UNet takes [x_t, mask, masked image]: run it with the whole image masked
  refine: bool = False         # colour refinement of the band between refine_low and refine_high (see above)
  refine_low: float = 1.0      # below this x the map's mean: sure background
  refine_high: float = 4.0     # above this x the map's mean: sure object
  refine_k: int = 5            # nearest sure pixels that vote
  refine_xy: float = 0.5       # weight of the position (in image heights) against RGB in [0, 1]
  refine_size: int = 64        # refinement runs at most at this side (pairwise distances), then upsampled

  def check(self) -> "Settings":
    if not 0.0 < self.strength < 1.0:
      raise SpurjaxError(f"diffedit: strength={self.strength} must be in (0, 1)")
    if self.n_draws < 1 or self.smooth < 0 or self.close < 0 or self.box_grow < 0:
      raise SpurjaxError(f"diffedit: n_draws >= 1 and smooth, close, box_grow >= 0 needed, got {self}")
    if not self.threshold > 0:
      raise SpurjaxError(f"diffedit: threshold={self.threshold} must be > 0")
    if self.box not in ("none", "box", "square"):
      raise SpurjaxError(f"diffedit: box={self.box!r} must be 'none', 'box' or 'square'")
    if self.refine and not (0 <= self.refine_low < self.refine_high and self.refine_k >= 1
                            and self.refine_xy >= 0 and self.refine_size >= 4):
      raise SpurjaxError(f"diffedit: refinement needs 0 <= refine_low < refine_high, refine_k >= 1, refine_xy >= 0 "
                         f"and refine_size >= 4, got low={self.refine_low} high={self.refine_high} "
                         f"k={self.refine_k} xy={self.refine_xy} size={self.refine_size}")
    return self


def parse_band(band, where: str) -> tuple[float, float]:
  """(low, high) of the colour refinement from a pair or a "LOW,HIGH" string; `where` names the
  setting in the one-line error."""
  parts = band.split(",") if isinstance(band, str) else list(band)
  if len(parts) != 2:
    raise SpurjaxError(f"{where}: (low, high) needed, got {band!r}")
  try:
    low, high = float(parts[0]), float(parts[1])
  except (TypeError, ValueError):
    raise SpurjaxError(f"{where}: numbers needed, got {band!r}") from None
  if not 0 <= low < high:
    raise SpurjaxError(f"{where}: 0 <= low < high needed, got {band!r}")
  return low, high


def _pool(x: jax.Array, radius: int, op: str) -> jax.Array:
  """(B, H, W) windowed max / min / mean over a (2r + 1)^2 window, same size."""
  if radius == 0:
    return x
  k = 2 * radius + 1
  if op == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k), (1, 1, 1), "SAME")
  if op == "min":
    return jax.lax.reduce_window(x, jnp.inf, jax.lax.min, (1, k, k), (1, 1, 1), "SAME")
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k), (1, 1, 1), "SAME")
  h, w = x.shape[1:]
  cy = jnp.minimum(jnp.arange(h) + radius, h - 1) - jnp.maximum(jnp.arange(h) - radius, 0) + 1
  cx = jnp.minimum(jnp.arange(w) + radius, w - 1) - jnp.maximum(jnp.arange(w) - radius, 0) + 1
  return total / (cy[:, None] * cx[None, :]).astype(x.dtype)  # window sizes, cut at the border


def _box_of(mask: jax.Array, grow: int, square: bool) -> jax.Array:
  """(B, H, W) bool -> the (grown, optionally squared) bounding box of each mask; an empty mask stays empty."""
  b, h, w = mask.shape
  rows, cols = mask.any(axis=2), mask.any(axis=1)
  iy, ix = jnp.arange(h), jnp.arange(w)
  y0 = jnp.min(jnp.where(rows, iy, h), axis=1) - grow
  y1 = jnp.max(jnp.where(rows, iy, -1), axis=1) + 1 + grow
  x0 = jnp.min(jnp.where(cols, ix, w), axis=1) - grow
  x1 = jnp.max(jnp.where(cols, ix, -1), axis=1) + 1 + grow
  y0, x0, y1, x1 = jnp.maximum(y0, 0), jnp.maximum(x0, 0), jnp.minimum(y1, h), jnp.minimum(x1, w)
  if square:
    side = jnp.minimum(jnp.maximum(y1 - y0, x1 - x0), min(h, w))
    y0 = jnp.clip(y0 - (side - (y1 - y0)) // 2, 0, h - side)
    x0 = jnp.clip(x0 - (side - (x1 - x0)) // 2, 0, w - side)
    y1, x1 = y0 + side, x0 + side
  inside = ((iy[None, :, None] >= y0[:, None, None]) & (iy[None, :, None] < y1[:, None, None])
            & (ix[None, None, :] >= x0[:, None, None]) & (ix[None, None, :] < x1[:, None, None]))
  return inside & rows.any(axis=1)[:, None, None]


def refine_masks(maps: jax.Array, images: jax.Array, st: Settings) -> jax.Array:
  """(B, H, W) maps in units of their mean and (B, H, W, 3) images in [0, 1] -> bool (B, H, W) masks.

  Sure object (> refine_high), sure background (< refine_low), and the rest labelled by a vote of
  the refine_k nearest sure pixels in (RGB, refine_xy * position) space. An image with no sure
  object pixel or fewer than refine_k sure pixels keeps the plain threshold.
  """
  b, h, w = maps.shape
  side = max(h, w)
  if side > st.refine_size:  # pairwise distances are (H W)^2 per image: refine on a smaller grid
    sh, sw = max(1, round(h * st.refine_size / side)), max(1, round(w * st.refine_size / side))
    # maps come from a coarser grid (latents) and are sampled, not averaged; colours are averaged
    small = refine_masks(jax.image.resize(maps, (b, sh, sw), "linear", antialias=False),
                         jax.image.resize(images, (b, sh, sw, images.shape[-1]), "linear"), st)
    return jax.image.resize(small.astype(jnp.float32), (b, h, w), "nearest") > 0.5
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) / h, jnp.arange(w, dtype=jnp.float32) / h, indexing="ij")
  pos = jnp.broadcast_to(jnp.stack([yy, xx], -1), (b, h, w, 2)) * st.refine_xy
  feat = jnp.concatenate([images.astype(jnp.float32), pos], -1).reshape(b, h * w, -1)
  m = maps.reshape(b, h * w)
  fg, bg = m > st.refine_high, m < st.refine_low
  sure = fg | bg
  sq = jnp.sum(feat * feat, -1)
  dist = sq[:, :, None] + sq[:, None, :] - 2.0 * jnp.einsum("bpc,bqc->bpq", feat, feat)
  dist = jnp.where(sure[:, None, :], dist, jnp.inf)
  k = min(st.refine_k, h * w)
  _, nearest = jax.lax.top_k(-dist, k)                          # (B, HW, k) nearest sure pixels
  votes = jnp.take_along_axis(fg[:, None, :].astype(jnp.float32), nearest, axis=2).mean(-1)
  refined = fg | (~sure & (votes > 0.5))
  usable = (fg.sum(1) >= 1) & (sure.sum(1) >= k)
  out = jnp.where(usable[:, None], refined, m > st.threshold)
  return out.reshape(b, h, w)


def _contrast(denoise_fn, encode_fn, sched, st: Settings, params, images, ctx_source, ctx_target, rng):
  x = images * 2.0 - 1.0
  z0 = x if encode_fn is None else encode_fn(params, x).astype(jnp.float32)
  b = z0.shape[0]
  n = sched.num_train_timesteps
  t = int(min(max(round(st.strength * n), 1), n - 1))
  tvec = jnp.full((2 * b,), t, jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(b))
  context = jnp.concatenate([ctx_source, ctx_target], axis=0)

  def draw(total, j):
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, j), z0.shape[1:], jnp.float32))(keys)
    xt = schedulers.add_noise(sched, z0, noise, t)
    xin = jnp.concatenate([xt, xt], axis=0)
    if st.inpaint:  # whole image masked: mask 1, masked image 0
      xin = jnp.concatenate([xin, jnp.ones_like(xin[..., :1]), jnp.zeros_like(xin)], axis=-1)
    out = denoise_fn(params, xin, tvec, context).astype(jnp.float32)
    return total + jnp.mean(jnp.abs(out[b:] - out[:b]), axis=-1), None

  total, _ = jax.lax.scan(draw, jnp.zeros(z0.shape[:3], jnp.float32), jnp.arange(st.n_draws))
  diff = total / st.n_draws
  if diff.shape[1:] != images.shape[1:3]:
    diff = jax.image.resize(diff, (b,) + images.shape[1:3], method="linear")
  diff = _pool(diff, st.smooth, "mean")
  maps = diff / (jnp.mean(diff, axis=(1, 2), keepdims=True) + 1e-12)
  mask = refine_masks(maps, images, st) if st.refine else maps > st.threshold
  if st.close:
    m = mask.astype(jnp.float32)
    mask = _pool(_pool(m, st.close, "max"), st.close, "min") > 0.5
  if st.box != "none":
    mask = _box_of(mask, st.box_grow, st.box == "square")
  return maps, mask


@functools.lru_cache(maxsize=32)
def _program(denoise_fn, encode_fn, sched, st: Settings):
  return jax.jit(functools.partial(_contrast, denoise_fn, encode_fn, sched, st))


def contrast_masks(denoise_fn: DenoiseFn, sched: schedulers.Schedule, params, images, ctx_source, ctx_target,
                   rng: jax.Array, *, encode_fn=None, settings: Settings = Settings()) -> tuple[jax.Array, jax.Array]:
  """DiffEdit contrast maps and masks of a batch of images.

  Args:
    denoise_fn: (params, x_t, t, context) -> model output, as in `spurjax.diffusion.sampling`
      (x_t with 2C + 1 channels when `settings.inpaint`).
    sched: the model's noise schedule.
    params: pytree passed to `denoise_fn` / `encode_fn`.
    images: float (B, H, W, 3) un-normalised RGB in [0, 1] at the model's resolution.
    ctx_source: (B, L, D) text embeddings of each image's own class prompt ("a photo of a bird").
    ctx_target: (B, L, D) text embeddings of the contrasting class's prompt ("a photo of a flower").
    rng: PRNG key; image b, draw j uses fold_in(fold_in(rng, b), j).
    encode_fn: (params, images in [-1, 1]) -> scaled latents; None for pixel-space models. The map
      is bilinearly upsampled from the latent grid to the image size.
    settings: `Settings` (strength, draws, threshold in units of the mean, smoothing, closing, box).
  Returns:
    (maps, masks): float32 (B, H, W) |difference| divided by its per-image mean, and bool (B, H, W)
    masks, True = object (or its box).
  """
  st = settings.check()
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise SpurjaxError(f"diffedit: images must be (B, H, W, 3) in [0, 1], got shape {tuple(images.shape)}")
  b = images.shape[0]
  ctx_source, ctx_target = jnp.asarray(ctx_source), jnp.asarray(ctx_target)
  if ctx_source.shape != ctx_target.shape or ctx_source.shape[0] != b:
    raise SpurjaxError(f"diffedit: contexts {tuple(ctx_source.shape)} / {tuple(ctx_target.shape)} must both have "
                       f"{b} rows and the same shape")
  return _program(denoise_fn, encode_fn, sched, st)(params, images, ctx_source, ctx_target, rng)


def pipeline_contrast_masks(pipeline, images, source_prompts, target_prompts, *, seed: int = 0,
                            settings: Settings | None = None, **overrides) -> tuple[np.ndarray, np.ndarray]:
  """`contrast_masks` for a loaded pipeline: images (B, H, W, 3) in [0, 1] at the model's resolution,
  one source and one target prompt per image; `overrides` are `Settings` fields (inpaint is set from
  the UNet). Returns numpy (maps, masks)."""
  from spurjax.diffusion import pipeline_sampling
  fns = pipeline_sampling.pipeline_fns(pipeline)
  st = dataclasses.replace(settings or Settings(), inpaint=bool(pipeline.is_inpaint), **overrides)
  ctx_s = pipeline_sampling.encode_prompts(pipeline, list(source_prompts))
  ctx_t = pipeline_sampling.encode_prompts(pipeline, list(target_prompts))
  sched = schedulers.make_schedule(pipeline.scheduler_config)
  maps, masks = contrast_masks(fns.denoise, sched, fns.params, images, ctx_s, ctx_t, jax.random.key(seed),
                               encode_fn=fns.encode, settings=st)
  return np.asarray(maps), np.asarray(masks)


def iou(pred, true) -> np.ndarray:
  """Per-image intersection over union of bool (B, H, W) masks (1.0 when both are empty)."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  inter = (pred & true).sum(axis=(1, 2))
  union = (pred | true).sum(axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
