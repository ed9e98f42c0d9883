"""MetaShift cats vs dogs, in the folder layout used by the DISC and DaC code.

  <root>/train/cat/cat(sofa)/*.jpg    <root>/train/dog/dog(bench)/*.jpg
  <root>/train/cat/cat(bed)/*.jpg     <root>/train/dog/dog(bike)/*.jpg
  <root>/test/cat/cat(shelf)/*.jpg    <root>/test/dog/dog(shelf)/*.jpg
  <root>/val/...                      optional, same shape as test/

Any `<animal>(<context>)` sub-folders are read (.jpg, .jpeg, .png). y: cat 0, dog 1.
place is the context index in the fixed order sofa 0, bed 1, bench 2, bike 3,
shelf 4, followed by any other context names in alphabetical order; so cats sit
on places 0/1 and dogs on 2/3 in train, and both on 4 in test.

Without a val/ folder, val is carved out of test as DaC does: a
`RandomState(seed)` permutation of the test images (cat contexts, then dog
contexts; each sorted by context, then file name), whose last `val_fraction`
share becomes val (the first ceil((1 - val_fraction) * n) stay test).
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from spurjax.data import images
from spurjax.data.table import SPLIT_IDS, Table, VAL
from spurjax.errors import SpurjaxError

CLASS_NAMES = ("cat", "dog")
CONTEXTS = ("sofa", "bed", "bench", "bike", "shelf")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _context_dirs(animal_dir: str, animal: str) -> list[tuple[str, str]]:
  """[(context, folder)] for the `<animal>(<context>)` sub-folders, sorted by context."""
  if not os.path.isdir(animal_dir):
    raise SpurjaxError(f"MetaShift: folder not found: {animal_dir}")
  pattern = re.compile(r"^(\w+)\((.+)\)$")
  out = []
  for entry in sorted(os.listdir(animal_dir)):
    path = os.path.join(animal_dir, entry)
    if not os.path.isdir(path):
      continue
    m = pattern.match(entry)
    if not m:
      raise SpurjaxError(f"MetaShift: folder name {path} is not of the form {animal}(<context>)")
    if m.group(1) != animal:
      raise SpurjaxError(f"MetaShift: folder {path} is a {m.group(1)} folder inside {animal}/")
    out.append((m.group(2), path))
  if not out:
    raise SpurjaxError(f"MetaShift: no {animal}(<context>) folders in {animal_dir}")
  return out


def _files(folder: str) -> list[str]:
  return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, f))]


def _scan(split_dir: str) -> list[tuple[str, int, str]]:
  """[(path, y, context)] of one split folder."""
  if not os.path.isdir(split_dir):
    raise SpurjaxError(f"MetaShift: folder not found: {split_dir}")
  rows = []
  for y, animal in enumerate(CLASS_NAMES):
    found = 0
    for context, folder in _context_dirs(os.path.join(split_dir, animal), animal):
      files = _files(folder)
      rows.extend((f, y, context) for f in files)
      found += len(files)
    if not found:
      raise SpurjaxError(f"MetaShift: no images under {os.path.join(split_dir, animal)}")
  return rows


def val_indices(n: int, val_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
  """Indices (into n test images) moved to val: the tail of a RandomState(seed) permutation."""
  n_test = math.ceil((1.0 - val_fraction) * n)
  return np.sort(np.random.RandomState(seed).permutation(n)[n_test:])


def read_metashift(root: str, *, val_fraction: float = 0.15, seed: int = 0) -> Table:
  """Reads the cat/dog MetaShift folders under `root` (see the module docstring)."""
  if not os.path.isdir(root):
    raise SpurjaxError(f"MetaShift folder not found: {root}")
  if not 0.0 <= val_fraction < 1.0:
    raise SpurjaxError(f"MetaShift: val_fraction must be in [0, 1), got {val_fraction}")
  per_split = {"train": _scan(os.path.join(root, "train")), "test": _scan(os.path.join(root, "test"))}
  if os.path.isdir(os.path.join(root, "val")):
    per_split["val"] = _scan(os.path.join(root, "val"))
  contexts = sorted({c for rows in per_split.values() for _, _, c in rows} - set(CONTEXTS))
  names = list(CONTEXTS) + contexts
  index = {c: i for i, c in enumerate(names)}

  refs, ys, places, splits = [], [], [], []
  for split, rows in per_split.items():
    split_ids = np.full(len(rows), SPLIT_IDS[split], np.int32)
    if split == "test" and "val" not in per_split:
      split_ids[val_indices(len(rows), val_fraction, seed)] = VAL
    refs.extend(r[0] for r in rows)
    ys.extend(r[1] for r in rows)
    places.extend(index[r[2]] for r in rows)
    splits.append(split_ids)
  split = np.concatenate(splits)
  return Table(
      name="metashift", refs=refs, y=np.asarray(ys, np.int32), place=np.asarray(places, np.int32),
      split=split, num_classes=2, num_places=len(names), read_image=images.read_image,
      class_names=list(CLASS_NAMES), place_names=names)
