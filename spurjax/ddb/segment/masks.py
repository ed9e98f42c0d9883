"""Masks from maps: method names, Otsu thresholds, cleaning (opening, closing, hole filling, small
components dropped, optional dilation; host, scipy.ndimage) and IoU against true masks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spurjax.errors import SpurjaxError

METHODS = ("attention", "diffedit", "gradcam", "given")


DIFFUSION_METHODS = ("attention", "diffedit")


_ALIASES = {"saliency": "gradcam", "cross_attention": "attention", "langsam": "attention"}


def method_name(name: str) -> str:
  m = _ALIASES.get(str(name), str(name))
  if m not in METHODS:
    raise SpurjaxError(f"config ddb.segment.method={name!r} must be one of {', '.join(METHODS)} (or 'saliency')")
  return m


@functools.partial(jax.jit, static_argnames="bins")
def otsu_threshold(values: jax.Array, bins: int = 256) -> jax.Array:
  """Otsu's threshold of values in [0, 1]: maximises the between-class variance of a histogram.

  Values strictly above the threshold are the foreground. Works under jit / vmap.
  """
  v = jnp.clip(jnp.ravel(values).astype(jnp.float32), 0.0, 1.0)
  idx = jnp.minimum((v * bins).astype(jnp.int32), bins - 1)
  hist = jnp.zeros((bins,), jnp.float32).at[idx].add(1.0)
  p = hist / jnp.maximum(hist.sum(), 1.0)
  centers = (jnp.arange(bins, dtype=jnp.float32) + 0.5) / bins
  omega = jnp.cumsum(p)
  mu = jnp.cumsum(p * centers)
  between = (mu[-1] * omega - mu) ** 2 / jnp.maximum(omega * (1.0 - omega), 1e-12)
  between = jnp.where((omega > 0) & (omega < 1), between, -1.0)
  k = jnp.argmax(between)
  return (k + 1).astype(jnp.float32) / bins


@jax.jit
def normalise_maps(maps: jax.Array) -> jax.Array:
  """Per-map min-max scaling of (B, H, W) maps to [0, 1] (a constant map becomes 0)."""
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  return jnp.where(hi > lo, (maps - lo) / jnp.maximum(hi - lo, 1e-12), 0.0)


@jax.jit
def otsu_masks(maps: jax.Array) -> jax.Array:
  """Boolean (B, H, W): each normalised map above its own Otsu threshold."""
  maps = normalise_maps(maps.astype(jnp.float32))
  thr = jax.vmap(otsu_threshold)(maps)
  return maps > thr[:, None, None]


def _disk(radius: int) -> np.ndarray:
  r = int(radius)
  y, x = np.ogrid[-r:r + 1, -r:r + 1]
  return x * x + y * y <= r * r


def clean_mask(mask, radius: int = 1, keep_ratio: float = 0.25, dilate: int = 0) -> np.ndarray:
  """Opening and closing, hole filling, components >= keep_ratio x the largest, optional dilation."""
  raw = np.asarray(mask, bool)
  m = raw
  if radius > 0:
    m = ndimage.binary_opening(m, _disk(radius))
    m = ndimage.binary_closing(m, _disk(radius), border_value=0)
  m = ndimage.binary_fill_holes(m)
  labels, n = ndimage.label(m)
  if n > 1:
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= keep_ratio * sizes.max())[0] + 1
    m = np.isin(labels, keep)
  if not m.any():
    m = raw
  if dilate > 0 and m.any():
    m = ndimage.binary_dilation(m, _disk(dilate))
  return m


def clean_masks(masks, radius: int = 1, keep_ratio: float = 0.25, dilate: int = 0) -> np.ndarray:
  return np.stack([clean_mask(m, radius, keep_ratio, dilate) for m in np.asarray(masks)])


def mask_iou(pred, true) -> float:
  """Intersection over union of two boolean masks (1.0 when both are empty)."""
  p, t = np.asarray(pred, bool), np.asarray(true, bool)
  if p.shape != t.shape:
    raise SpurjaxError(f"mask_iou: shapes {p.shape} and {t.shape} differ")
  union = np.logical_or(p, t).sum()
  return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def mean_iou(preds, trues) -> float:
  """Mean of `mask_iou` over pairs (NaN for no pairs)."""
  values = [mask_iou(p, t) for p, t in zip(preds, trues)]
  return float(np.mean(values)) if values else float("nan")
