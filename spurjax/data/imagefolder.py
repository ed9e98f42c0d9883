"""HF-style imagefolders (the captioned corpora that priors train on).

`metadata.csv` or `metadata.jsonl` with columns `file_name` and `text`, optionally
`mask_file_name` with object masks; file names are relative to the folder.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from spurjax.data.resize import square_box_bicubic
from spurjax.errors import SpurjaxError

REQUIRED_COLUMNS = ("file_name", "text")
MASK_COLUMN = "mask_file_name"


def _read_rows(root: str) -> tuple[str, str, list[tuple[int, dict]]]:
  """(metadata file, "row" or "line", [(row number, row dict)]) of an imagefolder."""
  if not os.path.isdir(root):
    raise SpurjaxError(f"imagefolder not found: {root}")
  csv_path, jsonl_path = os.path.join(root, "metadata.csv"), os.path.join(root, "metadata.jsonl")
  if os.path.isfile(csv_path):
    meta = csv_path
    with open(csv_path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      cols = reader.fieldnames or []
      _check_columns(meta, cols)
      rows = [(r, row) for r, row in enumerate(reader, start=2)]
  elif os.path.isfile(jsonl_path):
    meta, rows = jsonl_path, []
    with open(jsonl_path, encoding="utf-8") as f:
      for r, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise SpurjaxError(f"{meta}: line {r}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise SpurjaxError(f"{meta}: line {r}: expected a JSON object")
        _check_columns(meta, list(row), where=f"line {r}: ")
        rows.append((r, row))
  else:
    raise SpurjaxError(f"{root}: no metadata.csv or metadata.jsonl (an imagefolder needs one, with columns "
                       f"{', '.join(REQUIRED_COLUMNS)})")
  if not rows:
    raise SpurjaxError(f"{meta}: no rows")
  return meta, ("row" if meta == csv_path else "line"), rows


def read_imagefolder(root: str) -> tuple[list[str], list[str]]:
  """(image paths, captions) of an HF imagefolder with `metadata.csv` or `metadata.jsonl`."""
  meta, unit, rows = _read_rows(root)
  paths, texts = [], []
  for r, row in rows:
    name, text = row.get("file_name"), row.get("text")
    if not isinstance(name, str) or not name.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty 'file_name'")
    if not isinstance(text, str) or not text.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty 'text'")
    path = os.path.join(root, name.strip())
    if not os.path.isfile(path):
      raise SpurjaxError(f"{meta}: {unit} {r}: image not found: {path}")
    paths.append(path)
    texts.append(text.strip())
  return paths, texts


def read_mask_paths(root: str) -> list[str] | None:
  """The object-mask paths of an imagefolder (column `mask_file_name`), or None when it has none."""
  meta, unit, rows = _read_rows(root)
  if not any(MASK_COLUMN in row for _, row in rows):
    return None
  out = []
  for r, row in rows:
    name = row.get(MASK_COLUMN)
    if not isinstance(name, str) or not name.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty '{MASK_COLUMN}'")
    path = os.path.join(root, name.strip())
    if not os.path.isfile(path):
      raise SpurjaxError(f"{meta}: {unit} {r}: mask not found: {path}")
    out.append(path)
  return out


def _check_columns(meta: str, cols: Sequence[str], where: str = "") -> None:
  for c in REQUIRED_COLUMNS:
    if c not in cols:
      raise SpurjaxError(f"{meta}: {where}missing column '{c}' (have: {', '.join(cols) or 'none'})")


def load_images(paths: Sequence[str], size: int) -> np.ndarray:
  """uint8 (N, size, size, 3): RGB, resized (box filter down, bicubic up) to a square."""
  from spurjax.data.images import read_image
  out = np.empty((len(paths), size, size, 3), np.uint8)
  for i, p in enumerate(tqdm(paths, desc="loading images", leave=False, mininterval=2.0,
                             disable=len(paths) < 500)):
    out[i] = square_box_bicubic(read_image(p), size)
  return out


def load_masks(paths: Sequence[str], size: int) -> np.ndarray:
  """bool (N, size, size): object masks box-resized to `size`; a pixel is in if any of its area is."""
  out = np.empty((len(paths), size, size), bool)
  for i, p in enumerate(paths):
    m = np.asarray(Image.open(p).convert("L"))
    if m.shape != (size, size):
      m = np.asarray(Image.fromarray(m).resize((size, size), Image.BOX))
    out[i] = m > 0
  return out
