"""A tiny Waterbirds-format folder (`spurjax.data.folder`): metadata.csv (img_filename, y, place, split),
classes.json and JPEG photos of a bird-like blob on a land- or water-coloured scene.

Per group counts are Waterbirds' scaled down to the training batch (`split_counts`), so the evaluation
the trainers do each epoch weighs on the time per training image as it will on the real data.
Like the real folder it has no object masks.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from spurjax.fileio import write_json_atomic

# (y, place) groups: landbird on land, landbird on water, waterbird on land, waterbird on water.
GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))
WATERBIRDS_GROUPS = {0: (3498, 184, 56, 1057), 1: (467, 466, 133, 133), 2: (2255, 2255, 642, 642)}
SPLIT_COUNTS = {0: (8, 2, 2, 8), 1: (2, 1, 1, 1), 2: (9, 9, 3, 3)}   # per split, images per group


def split_counts(n_train: int) -> dict[int, tuple[int, ...]]:
  """Images per group of each split: Waterbirds' counts scaled to at least `n_train` training images
  (the batch must fit), every group present in every split."""
  scale = n_train / sum(WATERBIRDS_GROUPS[0])
  out = {}
  for split, groups in WATERBIRDS_GROUPS.items():
    per = [max(1, int(round(g * scale))) for g in groups]
    if split == 0 and sum(per) < n_train:
      per[0] += n_train - sum(per)
    out[split] = tuple(per)
  return out
STAMP = "dryrun_data.json"
_SCENE = {0: (96, 128, 60), 1: (50, 90, 150)}   # land green-brown, water blue
_BIRD = {0: (150, 110, 60), 1: (235, 235, 225)}  # landbird brown, waterbird white


def draw(y: int, place: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """uint8 (H, W, 3): a noisy scene with an ellipse 'bird' of the class's colour."""
  h, w = size[1], size[0]
  img = np.empty((h, w, 3), np.float32)
  img[:] = np.asarray(_SCENE[place], np.float32)
  img[: h // 3] = (170, 190, 215)   # sky
  img += rng.normal(0, 18, img.shape).astype(np.float32)
  yy, xx = np.mgrid[:h, :w]
  cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.35, 0.65)
  ry, rx = h * rng.uniform(0.12, 0.2), w * rng.uniform(0.15, 0.25)
  inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  img[inside] = np.asarray(_BIRD[y], np.float32) + rng.normal(0, 10, (int(inside.sum()), 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root, image_size: tuple[int, int] = (320, 240), seed: int = 0,
                 split_counts: dict | None = None, log=print) -> str:
  """Writes the folder (reused when one with the same settings is there); returns its path."""
  from PIL import Image
  counts = split_counts or SPLIT_COUNTS
  stamp = {"image_size": list(image_size), "seed": int(seed), "counts": {str(k): list(v) for k, v in counts.items()}}
  out = Path(root)
  try:
    if json.loads((out / STAMP).read_text(encoding="utf-8")) == stamp and (out / "metadata.csv").is_file():
      return str(out)
  except (OSError, ValueError):
    pass
  (out / "images").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for split, per_group in sorted(counts.items()):
    for (y, place), n in zip(GROUPS, per_group):
      for _ in range(int(n)):
        name = f"images/{len(rows):04d}_y{y}_p{place}.jpg"
        Image.fromarray(draw(y, place, image_size, rng)).save(out / name, quality=90)
        rows.append({"img_id": len(rows), "img_filename": name, "y": y, "split": split, "place": place})
  tmp = out / "metadata.csv.tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, out / "metadata.csv")
  write_json_atomic(out / "classes.json", {"classes": ["landbird", "waterbird"], "places": ["land", "water"]})
  write_json_atomic(out / STAMP, stamp)
  log(f"data in {out}: {len(rows)} JPEGs of {image_size[0]}x{image_size[1]} px")
  return str(out)
