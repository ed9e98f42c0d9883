"""The paste generator's core: erase an object, paste another class's object in its place.

For a class-i image with its object mask, `paste_edit` removes the object (the masked
pixels, grown by `dilate_px` pixels to take the antialiased outline along, are filled by
diffusing the surrounding background colours inward: iterated neighbour averaging, i.e. a
discrete Laplace solve with the border as boundary condition), cuts the object of a class-j
donor image out by its mask, scales it (aspect kept) to fit the erased region's bounding box
(`fit="box"`) or to the erased object's area (`fit="area"`), and pastes it there. With the true masks this is what a perfect object-replacing generator
would produce; with predicted masks it is a compositional (DaC-style) baseline.

Everything here is a pure function of numpy arrays (uint8 HWC images, bool HW masks) and a
seed; nothing reads files or touches a model.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from spurjax import rng as rng_ids
from spurjax.data.resize import pil_resize
from spurjax.errors import SpurjaxError


@dataclasses.dataclass(frozen=True)
class Edit:
  """A paste edit: the new image, and where it differs from the source.

  `mask` = `erased` | `pasted` (the region the edit may have changed; what attribution is
  summed over); `donor` is the position of the donor in the list it was drawn from.
  """

  image: np.ndarray
  mask: np.ndarray
  erased: np.ndarray
  pasted: np.ndarray
  donor: int


def _check(image: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  image, mask = np.asarray(image), np.asarray(mask)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise SpurjaxError(f"paste: {what} image must be HxWx3, got shape {image.shape}")
  if mask.shape != image.shape[:2]:
    raise SpurjaxError(f"paste: {what} mask shape {mask.shape} differs from its image's {image.shape[:2]}")
  mask = mask.astype(bool)
  if not mask.any():
    raise SpurjaxError(f"paste: {what} mask is empty")
  return image, mask


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
  """Grows a bool mask by `pixels` (8-connected steps)."""
  m = np.asarray(mask, bool)
  for _ in range(max(0, int(pixels))):
    p = np.pad(m, 1)
    grown = np.zeros_like(m)
    for dy in (0, 1, 2):
      for dx in (0, 1, 2):
        grown |= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
    m = grown
  return m


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of a non-empty mask, bottom / right exclusive."""
  rows, cols = np.nonzero(np.any(mask, 1))[0], np.nonzero(np.any(mask, 0))[0]
  if len(rows) == 0:
    raise SpurjaxError("paste: empty mask has no bounding box")
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def erase(image: np.ndarray, mask: np.ndarray, iters: Optional[int] = None, tol: float = 0.05) -> np.ndarray:
  """The image with the masked pixels filled from the surrounding background.

  Masked pixels start at the mean colour of the pixels bordering the mask and are then
  repeatedly replaced by the mean of their four neighbours (unmasked pixels fixed) until the
  largest change falls below `tol` (in 0..255 units) or `iters` sweeps (default 4 x the
  image side) have run. The result is harmonic inside the mask, so every filled value lies
  within the range of the border colours; unmasked pixels are returned unchanged.
  """
  image, mask = _check(image, mask, "source")
  h, w = mask.shape
  x = image.astype(np.float64)
  ring = dilate(mask, 1) & ~mask
  if not ring.any():
    raise SpurjaxError("paste: the mask covers the whole image; nothing to fill it from")
  x[mask] = x[ring].mean(0)
  iters = 4 * max(h, w) if iters is None else int(iters)
  for _ in range(iters):
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    avg = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
    change = np.abs(avg[mask] - x[mask]).max()
    x[mask] = avg[mask]
    if change < tol:
      break
  out = image.copy()
  out[mask] = np.clip(np.rint(x[mask]), 0, 255).astype(image.dtype)
  return out


def cut(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The object's bounding-box crop and its mask there."""
  image, mask = _check(image, mask, "donor")
  t, l, b, r = bbox(mask)
  return image[t:b, l:r], mask[t:b, l:r]


FITS = ("box", "area")


def fit_into(patch: np.ndarray, patch_mask: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
             flip: bool = False, fit: str = "box", area: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Places an object crop in `box` of an image of `shape` (H, W), aspect ratio kept, centred
  on the box; returns (HxWx3 image, HxW bool mask), zero / False outside the placed object.

  fit="box": the largest size that fits inside the box. fit="area": the size at which the
  object covers about `area` pixels (the erased object's), at most the image, clipped at the
  image border.
  """
  if fit not in FITS:
    raise SpurjaxError(f"paste: fit must be one of {', '.join(FITS)}, got {fit!r}")
  t, l, b, r = box
  bh, bw = b - t, r - l
  ph, pw = patch_mask.shape
  if bh < 1 or bw < 1:
    raise SpurjaxError(f"paste: empty target box {box}")
  if fit == "box":
    s = min(bh / ph, bw / pw)
  else:
    if not area or area < 1:
      raise SpurjaxError("paste: fit='area' needs the target area in pixels")
    s = min(np.sqrt(area / max(1, int(np.asarray(patch_mask).sum()))), shape[0] / ph, shape[1] / pw)
  nh, nw = max(1, int(round(ph * s))), max(1, int(round(pw * s)))
  if flip:
    patch, patch_mask = patch[:, ::-1], patch_mask[:, ::-1]
  if (nh, nw) == (ph, pw):
    img, m = np.asarray(patch), np.asarray(patch_mask, bool)
  else:
    img = pil_resize(patch, (nw, nh))
    m = pil_resize(np.asarray(patch_mask).astype(np.uint8) * 255, (nw, nh)) >= 128
  top = min(max(t + (bh - nh) // 2, 0), shape[0] - nh)
  left = min(max(l + (bw - nw) // 2, 0), shape[1] - nw)
  out = np.zeros(tuple(shape) + (3,), patch.dtype)
  out_m = np.zeros(tuple(shape), bool)
  out[top:top + nh, left:left + nw] = img
  out_m[top:top + nh, left:left + nw] = m
  return out, out_m


def paste_edit(image: np.ndarray, mask: np.ndarray, donors: Sequence[tuple[np.ndarray, np.ndarray]], seed: int,
               *, dilate_px: int = 1, flip: bool = True, fit: str = "box") -> Edit:
  """One counterfactual: `image`'s masked object erased and replaced by a donor's object.

  Args:
    image, mask: the source (class i) image and its object mask.
    donors: (image, mask) pairs of class-j training images; one is drawn with `seed`.
    seed: all randomness (donor choice, horizontal flip) comes from it.
    dilate_px: the erased region is the mask grown by this many pixels (the outline).
    flip: flip the donor object horizontally with probability 1/2.
    fit: "box" scales the donor object to fit the erased bounding box; "area" to the erased
      object's pixel count (centred on it; a tall object replacing a flat one stays large).
  """
  image, mask = _check(image, mask, "source")
  if len(donors) == 0:
    raise SpurjaxError("paste: no donor images of the target class")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), rng_ids.PASTE_DONOR]))
  k = int(rng.integers(len(donors)))
  do_flip = bool(flip and rng.random() < 0.5)
  d_img, d_mask = _check(*donors[k], what=f"donor {k}")
  erased = dilate(mask, dilate_px)
  clean = erase(image, erased)
  patch, patch_mask = cut(d_img, d_mask)
  obj, pasted = fit_into(patch, patch_mask, bbox(erased), mask.shape, flip=do_flip, fit=fit,
                         area=int(mask.sum()))
  out = clean.copy()
  out[pasted] = obj[pasted]
  return Edit(image=out, mask=erased | pasted, erased=erased, pasted=pasted, donor=k)
