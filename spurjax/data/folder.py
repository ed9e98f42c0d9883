"""Waterbirds-format folders: `metadata.csv` + images relative to the folder.

Columns: `img_filename`, `y` (class, 0..K-1), `split` (0 train, 1 val, 2 test), `place`
(spurious attribute, 0..A-1); optional `mask_filename` (object masks), `caption`.
Any number of classes and attribute values works; group = (y, place).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Optional

import numpy as np
from tqdm import tqdm

from spurjax.data import images
from spurjax.data.table import Table, TRAIN
from spurjax.errors import SpurjaxError

REQUIRED = ("img_filename", "y", "split", "place")


def _int(value: str, *, file: str, row: int, col: str, lo: int, hi: Optional[int]) -> int:
  try:
    v = int(str(value).strip())
  except ValueError:
    raise SpurjaxError(f"{file}: row {row}: column '{col}' is not an integer: {value!r}") from None
  if v < lo or (hi is not None and v >= hi):
    rng = f"[{lo}, {hi - 1}]" if hi is not None else f">= {lo}"
    raise SpurjaxError(f"{file}: row {row}: column '{col}' = {v} is out of range {rng}")
  return v


def read_folder(root: str, *, num_classes: Optional[int] = None, num_places: Optional[int] = None,
                verify: str = "full", name: Optional[str] = None) -> Table:
  """Reads and validates a Waterbirds-format folder.

  Args:
    root: the folder holding metadata.csv.
    num_classes / num_places: if given, labels must lie below them; else inferred as max + 1.
    verify: "full" decodes every image and mask (catches truncated files), "header" reads
      only sizes (catches missing/unreadable files and mask size mismatches), "none" skips.
  Row numbers in errors count the header as row 1, as a spreadsheet shows them.
  """
  meta = os.path.join(root, "metadata.csv")
  if not os.path.isdir(root):
    raise SpurjaxError(f"dataset folder not found: {root}")
  if not os.path.isfile(meta):
    raise SpurjaxError(f"{meta}: file not found (a dataset folder needs metadata.csv)")
  with open(meta, newline="") as f:
    reader = csv.DictReader(f)
    cols = reader.fieldnames or []
    for c in REQUIRED:
      if c not in cols:
        raise SpurjaxError(f"{meta}: missing column '{c}' (have: {', '.join(cols) or 'none'})")
    rows = list(reader)
  if not rows:
    raise SpurjaxError(f"{meta}: no rows")
  has_mask = "mask_filename" in cols
  has_caption = "caption" in cols
  refs, ys, places, splits, masks, caps = [], [], [], [], [], []
  for r, row in enumerate(rows, start=2):
    fn = (row["img_filename"] or "").strip()
    if not fn:
      raise SpurjaxError(f"{meta}: row {r}: empty 'img_filename'")
    refs.append(os.path.join(root, fn))
    ys.append(_int(row["y"], file=meta, row=r, col="y", lo=0, hi=num_classes))
    places.append(_int(row["place"], file=meta, row=r, col="place", lo=0, hi=num_places))
    splits.append(_int(row["split"], file=meta, row=r, col="split", lo=0, hi=3))
    if has_mask:
      m = (row["mask_filename"] or "").strip()
      masks.append(os.path.join(root, m) if m else None)
    if has_caption:
      caps.append(row["caption"] or "")
  y = np.asarray(ys, np.int32)
  place = np.asarray(places, np.int32)
  split = np.asarray(splits, np.int32)
  k = num_classes or int(y.max()) + 1
  a = num_places or int(place.max()) + 1
  train_counts = np.bincount(y[split == TRAIN], minlength=k)
  for c in range(k):
    if train_counts[c] == 0:
      raise SpurjaxError(f"{meta}: class {c} has no training image (split 0)")
  class_names = place_names = None
  classes_json = os.path.join(root, "classes.json")
  if os.path.isfile(classes_json):
    try:
      with open(classes_json) as f:
        info = json.load(f)
    except (OSError, ValueError) as e:
      raise SpurjaxError(f"{classes_json}: unreadable ({e})") from None
    class_names = info.get("classes")
    place_names = info.get("places")
  if verify != "none":
    _verify(meta, refs, masks if has_mask else None, full=(verify == "full"))
  return Table(
      name=name or os.path.basename(os.path.normpath(root)), refs=refs, y=y, place=place, split=split,
      num_classes=k, num_places=a, read_image=images.read_image,
      mask_refs=masks if has_mask else None, read_mask=images.read_mask if has_mask else None,
      captions=caps if has_caption else None, class_names=class_names, place_names=place_names)


def _verify(meta: str, refs, masks, *, full: bool) -> None:
  it = tqdm(range(len(refs)), desc=f"checking images ({'decode' if full else 'headers'})", leave=False,
            mininterval=1.0, disable=len(refs) < 2000)
  for i in it:
    row = i + 2
    try:
      if full:
        im = images.read_image(refs[i])
        size = (im.shape[1], im.shape[0])
      else:
        size = images.image_size(refs[i])
      if masks is not None and masks[i] is not None:
        msize = images.image_size(masks[i], "mask") if not full else images.read_mask(masks[i]).shape[::-1]
        if tuple(msize) != tuple(size):
          raise SpurjaxError(f"mask size {tuple(msize)} differs from image size {tuple(size)}: {masks[i]}")
    except SpurjaxError as e:
      raise SpurjaxError(f"{meta}: row {row}: {e}") from None
