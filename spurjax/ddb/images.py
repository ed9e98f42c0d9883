"""Images on their way to a diffusion model: its working resolution, and arrays as float RGB in [0, 1]."""
from __future__ import annotations

import numpy as np

from spurjax.errors import SpurjaxError


def diffusion_size(pipeline) -> tuple[int, int]:
  """(height, width) of the images the pipeline works at: UNet sample_size x VAE scale factor."""
  config = dict(getattr(pipeline.unet, "config", {}) or {})
  s = config.get("sample_size")
  if s is None:
    raise SpurjaxError("diffusion model: unet config has no sample_size, so its resolution is unknown")
  h, w = (s, s) if isinstance(s, int) else tuple(s)
  f = int(getattr(pipeline, "vae_scale_factor", 1) or 1) if getattr(pipeline, "vae", None) is not None else 1
  return int(h) * f, int(w) * f


def to_float_images(images) -> np.ndarray:
  """uint8 (0..255) or float (0..1) NHWC RGB as float32 in [0, 1]."""
  a = np.asarray(images)
  if a.ndim != 4 or a.shape[-1] != 3:
    raise SpurjaxError(f"images: expected (B, H, W, 3) RGB, got shape {a.shape}")
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  a = a.astype(np.float32)
  if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
    raise SpurjaxError(f"images: float values must be in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
  return np.clip(a, 0.0, 1.0)
