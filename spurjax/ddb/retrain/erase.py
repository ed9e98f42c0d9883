"""Background-only images: each selected image with its object erased, for retraining with a uniform target.

DDB's edits teach the retrained network that a class-i scene can hold a class-i' object. They do not
tell it that the scene alone says nothing about the class, and part of what it learns from them is
"repainted square in a class-i scene = class i'" (`spurjax bench artefact`). With
`ddb.retrain.background_weight > 0` retraining also sees every selected image with its object erased by its
own segment mask (`ddb.retrain.background_grow` px grown), once under each class label at that weight: the
loss of those rows is smallest when the network gives the scene alone a uniform prediction.

Erasing needs no generator and no group label: the object's pixels (the segment stage's mask before
its box, grown) are filled with the scene texture found at the same place shifted by the object's
width (then height, then both) where that lands outside the mask, and any pixel still missing takes
the colour of its nearest unmasked pixel. `spurjax.ddb.inpaint.paste.erase` (the paste generator's) fills a
hole smoothly instead; a smooth patch in a textured scene could itself mark where the object was, so
these rows keep the scene's texture (the two fills were not compared in retraining). `grown` dilates 4-connected (paste's `dilate` 8-connected); the
erased-background numbers in README and `configs/synth.py` were measured with it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from spurjax.data.table import GENERATED, Table
from spurjax.errors import SpurjaxError


def grown(mask: np.ndarray, grow: int) -> np.ndarray:
  """`mask` (bool) dilated by `grow` px (an empty mask stays empty)."""
  mask = np.asarray(mask, bool)
  return ndimage.binary_dilation(mask, iterations=int(grow)) if grow > 0 and mask.any() else mask


def erase_object(image: np.ndarray, mask: np.ndarray, grow: int = 2) -> np.ndarray:
  """`image` (H, W, C) with the pixels of `mask` (H, W; grown by `grow` px) filled with nearby scene texture."""
  image = np.asarray(image)
  mask = np.asarray(mask, bool)
  if mask.shape != image.shape[:2]:
    raise SpurjaxError(f"erase: mask shape {mask.shape} does not match image shape {image.shape[:2]}")
  mask = grown(mask, grow)
  if not mask.any():
    return image.copy()
  if mask.all():
    raise SpurjaxError("erase: the mask covers the whole image, there is no scene left to fill it with")
  out, todo = image.copy(), mask.copy()
  ys, xs = np.nonzero(mask)
  h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
  H, W = mask.shape
  shifts = ((0, w + 1), (0, -(w + 1)), (h + 1, 0), (-(h + 1), 0), (h + 1, w + 1), (-(h + 1), -(w + 1)),
            (h + 1, -(w + 1)), (-(h + 1), w + 1))
  for dy, dx in shifts:
    yy, xx = np.nonzero(todo)
    if not len(yy):
      break
    sy, sx = yy + dy, xx + dx
    ok = (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
    ok[ok] &= ~mask[sy[ok], sx[ok]]
    out[yy[ok], xx[ok]] = image[sy[ok], sx[ok]]
    todo[yy[ok], xx[ok]] = False
  if todo.any():
    _, (iy, ix) = ndimage.distance_transform_edt(mask, return_indices=True)
    out[todo] = image[iy[todo], ix[todo]]
  return out


def background_table(table: Table, images: dict, masks: dict, grow: int = 2) -> Table:
  """Generated rows: for each table index in `masks` (sorted), `images[i]` with its object erased, once
  per class label. An empty mask (nothing to erase: the image would keep its object) or one that covers
  the whole image once grown (no scene left) is skipped. Attribute (`place`) 0 on every row: nothing
  here reads a group label."""
  indices = sorted(int(i) for i in masks)
  missing = [i for i in indices if i not in images]
  if missing:
    raise SpurjaxError(f"erase: no image for table index {missing[0]}")
  erased = []
  for i in indices:
    m = np.asarray(masks[i], bool)
    if m.any() and not grown(m, grow).all():
      erased.append(erase_object(images[i], m, grow))
  k = int(table.num_classes)
  refs = [n for n in range(len(erased)) for _ in range(k)]
  y = np.tile(np.arange(k, dtype=np.int32), len(erased))
  return Table(name="erased backgrounds", refs=refs, y=y, place=np.zeros(len(y), np.int32),
               split=np.full(len(y), GENERATED, np.int32), num_classes=k, num_places=table.num_places,
               read_image=lambda r: erased[r], class_names=table.class_names, place_names=table.place_names)
