"""CelebA in its common CSV layout (as distributed on Kaggle).

  <root>/list_eval_partition.csv   image_id, partition (0 train, 1 val, 2 test)
  <root>/list_attr_celeba.csv      image_id and 40 attribute columns in {-1, 1}
  <root>/img_align_celeba/         the aligned JPEGs (a nested
                                   img_align_celeba/img_align_celeba/ is accepted)

y = (target == 1) and place = (spurious == 1); the usual benchmark is Blond_Hair
with Male as the spurious attribute. CelebA's eval transform (center crop 178,
resize 224) is left to the input pipeline (`Preprocess(center_crop=178, ...)`).
"""
from __future__ import annotations

import csv
import os

import numpy as np

from spurjax.data import images
from spurjax.data.table import Table
from spurjax.errors import SpurjaxError

PARTITION_FILE = "list_eval_partition.csv"
ATTR_FILE = "list_attr_celeba.csv"
IMAGE_DIR = "img_align_celeba"


def _read_csv(path: str) -> tuple[list[str], list[list[str]]]:
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: file not found")
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise SpurjaxError(f"{path}: empty file (no header)")
  return [c.strip() for c in rows[0]], rows[1:]


def _column(path: str, header: list[str], name: str, what: str = "column") -> int:
  if name not in header:
    known = ", ".join(c for c in header if c != "image_id")
    raise SpurjaxError(f"{path}: unknown {what} '{name}' (have: {known or 'none'})")
  return header.index(name)


def _image_dir(root: str) -> str:
  nested = os.path.join(root, IMAGE_DIR, IMAGE_DIR)
  if os.path.isdir(nested):
    return nested
  flat = os.path.join(root, IMAGE_DIR)
  if not os.path.isdir(flat):
    raise SpurjaxError(f"{flat}: image folder not found")
  return flat


def _ids(path: str, rows: list[list[str]], width: int) -> list[str]:
  ids, seen = [], set()
  for r, row in enumerate(rows, start=2):
    if len(row) != width:
      raise SpurjaxError(f"{path}: row {r}: {len(row)} fields, header has {width}")
    image_id = row[0].strip()
    if not image_id:
      raise SpurjaxError(f"{path}: row {r}: empty image_id")
    if image_id in seen:
      raise SpurjaxError(f"{path}: row {r}: duplicate image_id {image_id!r}")
    seen.add(image_id)
    ids.append(image_id)
  return ids


def _pm1(path: str, rows: list[list[str]], col: int, name: str) -> np.ndarray:
  out = np.empty(len(rows), np.int32)
  for r, row in enumerate(rows):
    v = row[col].strip()
    if v == "1":
      out[r] = 1
    elif v == "-1":
      out[r] = 0
    else:
      raise SpurjaxError(f"{path}: row {r + 2}: column '{name}' = {v!r}, expected -1 or 1")
  return out


def read_celeba(root: str, target: str = "Blond_Hair", spurious: str = "Male", *,
                check_files: bool = False) -> Table:
  """Reads CelebA labels; y = `target` attribute, place = `spurious` attribute.

  Args:
    root: folder with the two CSV files and the image folder.
    target / spurious: attribute column names of list_attr_celeba.csv.
    check_files: also check that every image file exists (one stat per image).
  Row numbers in errors count the header as row 1.
  """
  if not os.path.isdir(root):
    raise SpurjaxError(f"CelebA folder not found: {root}")
  if target == spurious:
    raise SpurjaxError(f"CelebA: target and spurious attribute are both '{target}'")
  part_path = os.path.join(root, PARTITION_FILE)
  attr_path = os.path.join(root, ATTR_FILE)
  part_header, part_rows = _read_csv(part_path)
  attr_header, attr_rows = _read_csv(attr_path)
  for path, header in ((part_path, part_header), (attr_path, attr_header)):
    if not header or header[0] != "image_id":
      raise SpurjaxError(f"{path}: missing column 'image_id' as the first column")
  _column(part_path, part_header, "partition")
  t_col = _column(attr_path, attr_header, target, "attribute")
  s_col = _column(attr_path, attr_header, spurious, "attribute")
  image_dir = _image_dir(root)

  attr_ids = _ids(attr_path, attr_rows, len(attr_header))
  part_ids = _ids(part_path, part_rows, len(part_header))
  if not attr_ids:
    raise SpurjaxError(f"{attr_path}: no rows")
  p_col = part_header.index("partition")
  partition = {}
  for r, (image_id, row) in enumerate(zip(part_ids, part_rows), start=2):
    v = row[p_col].strip()
    if v not in ("0", "1", "2"):
      raise SpurjaxError(f"{part_path}: row {r}: column 'partition' = {v!r}, expected 0, 1 or 2")
    partition[image_id] = int(v)
  attr_set = set(attr_ids)
  for r, image_id in enumerate(part_ids, start=2):
    if image_id not in attr_set:
      raise SpurjaxError(f"{part_path}: row {r}: image_id {image_id!r} is not in {ATTR_FILE}")
  for r, image_id in enumerate(attr_ids, start=2):
    if image_id not in partition:
      raise SpurjaxError(f"{attr_path}: row {r}: image_id {image_id!r} is not in {PARTITION_FILE}")

  y = _pm1(attr_path, attr_rows, t_col, target)
  place = _pm1(attr_path, attr_rows, s_col, spurious)
  split = np.asarray([partition[i] for i in attr_ids], np.int32)
  refs = [os.path.join(image_dir, i) for i in attr_ids]
  if check_files:
    for r, ref in enumerate(refs, start=2):
      if not os.path.isfile(ref):
        raise SpurjaxError(f"{attr_path}: row {r}: image file not found: {ref}")
  return Table(
      name="celeba", refs=refs, y=y, place=place, split=split, num_classes=2, num_places=2,
      read_image=images.read_image,
      class_names=[f"not {target}", target], place_names=[f"not {spurious}", spurious])
