"""Boxes around objects: a mask's bounding box, grown, squared, and drawn back as a mask.

Two consumers with their own, deliberately kept, conventions:
- `inference_mask` (and the prior's training masks built from `grow_box` / `square_box`): square
  images; the grown box is clipped to the image before it is squared, the square is placed by
  floor division, and an empty object mask counts as the whole image (`object_boxes`).
- `box_masks` (the segment stage's `ddb.segment.box`): any H x W; the grown box is squared before
  clipping, centred by rounding, and an empty mask stays empty.
The two differ at image borders, for odd margins and for empty masks, so DDB's masks and the
prior's regions are not computed by one function.
"""
from __future__ import annotations

import numpy as np

from spurjax.errors import SpurjaxError


def object_boxes(masks: np.ndarray) -> np.ndarray:
  """int (N, 4) boxes (y0, x0, y1, x1), end-exclusive, of bool (N, H, W) masks; an empty mask gets the image."""
  masks = np.asarray(masks, bool)
  n, h, w = masks.shape
  out = np.tile(np.asarray([0, 0, h, w], np.int64), (n, 1))
  rows, cols = masks.any(2), masks.any(1)
  for i in range(n):
    if rows[i].any():
      ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
      out[i] = ys[0], xs[0], ys[-1] + 1, xs[-1] + 1
  return out


def fit_interval(lo: int, length: int, size: int) -> tuple[int, int]:
  """An interval of `length` (at most `size`) starting near `lo`, shifted to lie inside [0, size)."""
  length = min(max(int(length), 1), size)
  lo = min(max(int(lo), 0), size - length)
  return lo, lo + length


def grow_box(box, pixels: int, size: int) -> tuple[int, int, int, int]:
  """A box grown by `pixels` on every side, clipped to the image."""
  y0, x0, y1, x1 = (int(v) for v in box)
  return max(0, y0 - pixels), max(0, x0 - pixels), min(size, y1 + pixels), min(size, x1 + pixels)


def square_box(box, size: int) -> tuple[int, int, int, int]:
  """The square with the box's longer side, centred on it and shifted into the image."""
  y0, x0, y1, x1 = (int(v) for v in box)
  side = max(y1 - y0, x1 - x0)
  ya, yb = fit_interval(y0 - (side - (y1 - y0)) // 2, side, size)
  xa, xb = fit_interval(x0 - (side - (x1 - x0)) // 2, side, size)
  return ya, xa, yb, xb


def box_mask(box, size: int) -> np.ndarray:
  """float32 (size, size): 1 inside the end-exclusive box (y0, x0, y1, x1), 0 elsewhere."""
  m = np.zeros((size, size), np.float32)
  y0, x0, y1, x1 = (int(v) for v in box)
  m[y0:y1, x0:x1] = 1.0
  return m


def inference_mask(mask: np.ndarray, kind: str = "square", grow: int = 2) -> np.ndarray:
  """The region to repaint for a bool (H, W) object mask: "object" (the mask itself), "box" (its box
  grown by `grow` px) or "square" (the square around that box, the default), as float32 0/1."""
  mask = np.asarray(mask, bool)
  size = mask.shape[0]
  if mask.shape != (size, size):
    raise SpurjaxError(f"inference_mask: expected a square mask, got shape {mask.shape}")
  if kind == "object":
    return mask.astype(np.float32)
  box = grow_box(object_boxes(mask[None])[0], grow, size)
  if kind == "box":
    return box_mask(box, size)
  if kind == "square":
    return box_mask(square_box(box, size), size)
  raise SpurjaxError(f"mask kind {kind!r} must be 'object', 'box' or 'square'")


def box_masks(masks, kind: str, grow: int = 0) -> np.ndarray:
  """Each mask replaced by its bounding box grown by `grow` px ("box") or the square around that box
  ("square", clipped to the image); "none" leaves them as they are; an empty mask stays empty."""
  masks = np.asarray(masks, bool)
  if kind == "none":
    return masks
  if kind not in ("box", "square"):
    raise SpurjaxError(f"config ddb.segment.box={kind!r} must be none, box or square")
  out = np.zeros_like(masks)
  h, w = masks.shape[1:]
  for n, m in enumerate(masks):
    ys, xs = np.nonzero(m)
    if not len(ys):
      continue
    y0, y1, x0, x1 = ys.min() - grow, ys.max() + 1 + grow, xs.min() - grow, xs.max() + 1 + grow
    if kind == "square":
      side = max(y1 - y0, x1 - x0)
      cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
      y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
      y0, x0 = min(max(y0, 0), max(h - side, 0)), min(max(x0, 0), max(w - side, 0))
      y1, x1 = y0 + side, x0 + side
    out[n, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
  return out
