"""Classifier-free guidance weights per sampler step, optionally limited to an interval of timesteps."""
from __future__ import annotations

import numpy as np

from spurjax.errors import SpurjaxError


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
