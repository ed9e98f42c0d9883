"""A broad labelled corpus for pretraining classifier backbones: the ImageNet stand-in.

The built-in benchmark (`spurjax.data.synth`) asks a classifier to tell a drawn bird from
a drawn flower when the background is a shortcut. The literature starts such classifiers
from ImageNet; this corpus plays that part. It holds ten object families that are *not*
the benchmark's classes (fish, tree, house, boat, butterfly, star, car, leaf, mushroom,
balloon), each varied in shape, size, colour and pose, on six scene families (land and
water, drawn exactly as the benchmark draws them, plus sky, snow, sand and wall). Every
object appears on every scene equally often, so the scene tells nothing about the label
and a model trained on it has to learn object shape.

`generate` writes a Waterbirds-format folder that `data.kind=folder` reads:

  metadata.csv   img_id, img_filename, y (object family), split (0 train, 1 val), place
                 (scene family), mask_filename
  classes.json   object and scene names, counts, settings
  images/<split>/<object>/<id>.png, masks/<split>/<object>/<id>.png

Images come from a random stream of their own (seeded by (seed, stream 2, index)), so no
image is shared with the benchmark or its captioned corpus.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from spurjax.data.drawing import (BROAD_STREAM, clutter, draw_object, ellipse, hsv_image, image_rng, land, poly, rect,
                                  rgb, smooth_noise, water)
from spurjax.data.writer import default_workers, staged_folder, write_csv, write_images
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

OBJECT_NAMES = ("fish", "tree", "house", "boat", "butterfly", "star", "car", "leaf", "mushroom", "balloon")
SCENE_NAMES = ("land", "water", "sky", "snow", "sand", "wall")
DEFAULT_TRAIN_PER_COMBO = 100
DEFAULT_VAL_PER_COMBO = 10


# ----------------------------------------------------------------------------- scenes


def _sky(rng: np.random.Generator, n: int) -> Image.Image:
  hue = rng.uniform(0.50, 0.68)
  yy = np.mgrid[0:n, 0:n][0].astype(np.float32) / n
  noise = smooth_noise(rng, n, 5)
  s = rng.uniform(0.35, 0.75) * (1.0 - rng.uniform(0.3, 0.7) * yy) + 0.04 * noise
  v = rng.uniform(0.65, 0.85) + rng.uniform(0.05, 0.2) * yy + 0.03 * noise
  img = hsv_image(hue + 0.01 * noise, s, v)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(2, 6))):  # clouds: clusters of white puffs
    cx, cy = rng.uniform(0, n), rng.uniform(0, n)
    grey = int(rng.uniform(215, 255))
    for _ in range(int(rng.integers(3, 7))):
      r = rng.uniform(0.04, 0.09) * n
      x, y = cx + rng.uniform(-2.5, 2.5) * r, cy + rng.uniform(-0.6, 0.6) * r
      draw.ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=(grey, grey, min(255, grey + 5)))
  return img


def _snow(rng: np.random.Generator, n: int) -> Image.Image:
  hue = rng.uniform(0.55, 0.65)
  coarse, fine = smooth_noise(rng, n, 4), smooth_noise(rng, n, 20)
  s = np.clip(rng.uniform(0.02, 0.12) + 0.08 * coarse, 0, 1)
  v = np.clip(rng.uniform(0.82, 0.95) + 0.06 * coarse + 0.03 * fine, 0, 1)
  img = hsv_image(hue + 0.0 * coarse, s, v)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(2, 6))):  # blue shadows of drifts
    cx, cy = rng.uniform(0, n, 2)
    rx, ry = rng.uniform(0.1, 0.3) * n, rng.uniform(0.02, 0.06) * n
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=rgb(hue, rng.uniform(0.12, 0.25), rng.uniform(0.7, 0.85)))
  clutter(draw, rng, n, stones=True)
  return img


def _sand(rng: np.random.Generator, n: int) -> Image.Image:
  hue = rng.uniform(0.08, 0.14)
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
  freq = rng.uniform(2.0, 5.0)
  tilt = rng.uniform(-0.4, 0.4)
  dunes = np.sin(2 * np.pi * (freq * (yy + tilt * xx) + 0.05 * smooth_noise(rng, n, 3) + rng.uniform()))
  grain = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
  s = np.clip(rng.uniform(0.35, 0.6) + 0.05 * dunes, 0, 1)
  v = np.clip(rng.uniform(0.7, 0.88) + 0.08 * dunes + 0.03 * grain, 0, 1)
  img = hsv_image(hue + 0.01 * dunes, s, v)
  clutter(ImageDraw.Draw(img), rng, n, stones=True)
  return img


def _wall(rng: np.random.Generator, n: int) -> Image.Image:
  hue, sat, val = rng.uniform(), rng.uniform(0.15, 0.6), rng.uniform(0.45, 0.8)
  img = Image.new("RGB", (n, n), rgb(hue, sat * 0.4, val * 0.75))  # mortar
  draw = ImageDraw.Draw(img)
  bh = rng.uniform(0.06, 0.14) * n
  bw = bh * rng.uniform(1.6, 3.0)
  gap = max(1.0, 0.12 * bh)
  row, y = 0, -rng.uniform(0, bh)
  while y < n:
    x = -rng.uniform(0, bw) - (0.5 * bw if row % 2 else 0.0)
    while x < n:
      colour = rgb(hue + rng.uniform(-0.02, 0.02), sat + rng.uniform(-0.08, 0.08), val + rng.uniform(-0.08, 0.08))
      draw.rectangle([x + gap / 2, y + gap / 2, x + bw - gap / 2, y + bh - gap / 2], fill=colour)
      x += bw
    y += bh
    row += 1
  return img


def _scene(place: int, rng: np.random.Generator, n: int) -> Image.Image:
  return (land, water, _sky, _snow, _sand, _wall)[place](rng, n)


# ----------------------------------------------------------------------------- objects
# A part: (polygon in object units, RGB fill, outlined), drawn in order, all in the mask.
# Objects span roughly [-0.5, 0.5]; y grows downwards.


def _colours(rng: np.random.Generator, hue: float):
  sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)
  main = rgb(hue, sat, val)
  dark = rgb(hue + rng.uniform(-0.05, 0.05), sat, val * rng.uniform(0.45, 0.7))
  other = rgb(hue + rng.uniform(0.3, 0.7), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
  return main, dark, other


def _fish(rng, hue):
  main, dark, other = _colours(rng, hue)
  a, b = rng.uniform(0.25, 0.36), rng.uniform(0.09, 0.2)
  tl, tw = rng.uniform(0.12, 0.22), rng.uniform(0.08, 0.18)
  fork = rng.uniform(0.0, 0.7)
  parts = [(poly((-0.8 * a, 0), (-a - tl, -tw), (-a - tl * (1 - fork) , 0), (-a - tl, tw)), dark, True)]
  parts.append((poly((-0.3 * a, -0.8 * b), (0.1 * a, -0.9 * b), (-0.5 * a, -b - rng.uniform(0.05, 0.12))),
                dark, True))
  parts.append((ellipse(0, 0, a, b), main, True))
  if rng.random() < 0.6:  # stripes
    for x in np.linspace(-0.5 * a, 0.4 * a, int(rng.integers(2, 4))):
      parts.append((ellipse(x, 0, 0.05 * a, 0.85 * b, k=12), other, False))
  r = 0.18 * b + 0.01
  parts.append((ellipse(0.65 * a, -0.25 * b, r, r, k=12), (15, 15, 15), False))
  return parts


def _tree(rng, hue):
  main, dark, _ = _colours(rng, hue)
  trunk = rgb(rng.uniform(0.03, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.5))
  tw, th = rng.uniform(0.03, 0.07), rng.uniform(0.25, 0.4)
  parts = [(rect(-tw, 0.5 - th, tw, 0.5), trunk, True)]
  top = 0.5 - th
  if rng.random() < 0.5:  # conifer: stacked triangles
    tiers = int(rng.integers(2, 4))
    w = rng.uniform(0.25, 0.38)
    height = rng.uniform(0.55, 0.75)
    for t in range(tiers):
      y0 = top + 0.1 - t * height / (tiers + 0.5)
      ww = w * (1 - 0.25 * t)
      parts.append((poly((-ww, y0), (ww, y0), (0, y0 - height / tiers * 1.3)), main if t % 2 else dark, True))
  else:  # broadleaf: a cluster of discs
    r = rng.uniform(0.16, 0.24)
    cy = top - 0.7 * r
    for dx, dy in ((0, -0.5), (-0.8, 0.1), (0.8, 0.1), (0, 0.3)):
      rr = r * rng.uniform(0.75, 1.05)
      parts.append((ellipse(dx * r, cy + dy * r, rr, rr * rng.uniform(0.8, 1.0)), main, True))
  return parts


def _house(rng, hue):
  main, dark, other = _colours(rng, hue)
  w, h = rng.uniform(0.25, 0.38), rng.uniform(0.2, 0.32)
  roof = rng.uniform(0.12, 0.28)
  over = rng.uniform(0.02, 0.08)
  base = 0.35
  parts = [(rect(-w, base - h, w, base), main, True),
           (poly((-w - over, base - h), (w + over, base - h), (rng.uniform(-0.3, 0.3) * w, base - h - roof)),
            dark, True)]
  dw = rng.uniform(0.05, 0.09)
  dx = rng.uniform(-0.5, 0.5) * w
  parts.append((rect(dx - dw, base - 0.6 * h, dx + dw, base), other, True))
  wx = dx + (0.55 * w if dx < 0 else -0.55 * w)
  ws = rng.uniform(0.04, 0.07)
  parts.append((rect(wx - ws, base - 0.8 * h, wx + ws, base - 0.8 * h + 2 * ws), (230, 230, 200), True))
  return parts


def _boat(rng, hue):
  main, dark, other = _colours(rng, hue)
  L, d = rng.uniform(0.3, 0.42), rng.uniform(0.08, 0.14)
  rake = rng.uniform(0.05, 0.15)
  base = 0.25
  parts = []
  mh = rng.uniform(0.4, 0.6)
  parts.append((rect(-0.015, base - d - mh, 0.015, base - d), (90, 60, 30), True))
  sail = rgb(hue + rng.uniform(0.3, 0.7), rng.uniform(0.0, 0.5), rng.uniform(0.8, 1.0))
  sw = rng.uniform(0.18, 0.3)
  parts.append((poly((0.03, base - d - mh), (0.03 + sw, base - d - 0.05), (0.03, base - d - 0.05)), sail, True))
  if rng.random() < 0.5:
    parts.append((poly((-0.03, base - d - 0.85 * mh), (-0.03 - 0.7 * sw, base - d - 0.05), (-0.03, base - d - 0.05)),
                  other, True))
  parts.append((poly((-L - rake, base - d), (L + rake, base - d), (L, base), (-L, base)), main, True))
  return parts


def _butterfly(rng, hue):
  main, dark, other = _colours(rng, hue)
  parts = []
  fw, fh = rng.uniform(0.2, 0.28), rng.uniform(0.14, 0.22)
  hw, hh = fw * rng.uniform(0.6, 0.9), fh * rng.uniform(0.6, 0.9)
  tilt = rng.uniform(0.2, 0.6)
  for side in (-1, 1):
    parts.append((ellipse(side * fw * 0.8, -0.55 * fh, fw, fh, side * tilt), main, True))
    parts.append((ellipse(side * hw * 0.8, 0.6 * hh, hw, hh, -side * tilt), dark, True))
    parts.append((ellipse(side * fw * 0.9, -0.6 * fh, 0.3 * fw, 0.3 * fh, k=12), other, False))
  parts.append((ellipse(0, 0, 0.03, rng.uniform(0.18, 0.26), k=16), (30, 25, 20), True))
  return parts


def _star(rng, hue):
  main, _, other = _colours(rng, hue)
  k = int(rng.integers(4, 8))
  outer, inner = rng.uniform(0.3, 0.42), rng.uniform(0.35, 0.55)
  t = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) - np.pi / 2
  r = np.where(np.arange(2 * k) % 2 == 0, outer, outer * inner)
  parts = [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), main, True)]
  if rng.random() < 0.4:
    c = outer * inner * 0.5
    parts.append((ellipse(0, 0, c, c, k=16), other, True))
  return parts


def _car(rng, hue):
  main, dark, _ = _colours(rng, hue)
  L, h = rng.uniform(0.34, 0.45), rng.uniform(0.1, 0.16)
  base = 0.15
  cab_l, cab_h = L * rng.uniform(0.45, 0.65), rng.uniform(0.09, 0.15)
  off = rng.uniform(-0.2, 0.15) * L
  glass = (170, 200, 230)
  parts = [(poly((off - cab_l, base - h), (off - 0.7 * cab_l, base - h - cab_h), (off + 0.6 * cab_l, base - h - cab_h),
                  (off + cab_l, base - h)), dark, True),
           (poly((off - 0.62 * cab_l, base - h - 0.1 * cab_h), (off - 0.5 * cab_l, base - h - 0.8 * cab_h),
                  (off + 0.5 * cab_l, base - h - 0.8 * cab_h), (off + 0.8 * cab_l, base - h - 0.1 * cab_h)), glass, True),
           (rect(-L, base - h, L, base), main, True)]
  wr = rng.uniform(0.06, 0.09)
  for x in (-0.6 * L, 0.6 * L):
    parts.append((ellipse(x, base, wr, wr, k=16), (25, 25, 25), True))
    parts.append((ellipse(x, base, 0.45 * wr, 0.45 * wr, k=12), (150, 150, 150), False))
  return parts


def _leaf(rng, hue):
  main, dark, _ = _colours(rng, hue)
  L, w = rng.uniform(0.3, 0.42), rng.uniform(0.1, 0.2)
  sharp = rng.uniform(0.6, 1.6)
  t = np.linspace(-1, 1, 24)
  x = L * t
  half = w * (1 - np.abs(t)) ** sharp * (1 + 0.3 * t)
  outline = np.concatenate([np.stack([x, -half], 1), np.stack([x[::-1], half[::-1]], 1)])
  parts = [(rect(-L - rng.uniform(0.06, 0.12), -0.012, -L + 0.02, 0.012), dark, True),
           (outline, main, True),
           (rect(-0.9 * L, -0.006, 0.9 * L, 0.006), dark, False)]
  for s in np.linspace(-0.6, 0.6, int(rng.integers(3, 6))):  # veins
    parts.append((poly((s * L, 0), (s * L + 0.1, -0.7 * w * (1 - abs(s))), (s * L + 0.11, -0.7 * w * (1 - abs(s))),
                        (s * L + 0.01, 0)), dark, False))
  return parts


def _mushroom(rng, hue):
  main, _, other = _colours(rng, hue)
  cw, ch = rng.uniform(0.22, 0.36), rng.uniform(0.12, 0.24)
  sw, sh = rng.uniform(0.05, 0.1), rng.uniform(0.18, 0.3)
  stem = rgb(rng.uniform(0.08, 0.15), rng.uniform(0.05, 0.3), rng.uniform(0.8, 1.0))
  top = 0.4 - sh
  t = np.linspace(np.pi, 2 * np.pi, 24)
  cap = np.stack([cw * np.cos(t), top + ch * np.sin(t)], axis=1)
  parts = [(rect(-sw, top - 0.01, sw, 0.4), stem, True), (cap, main, True)]
  for _ in range(int(rng.integers(0, 5))):  # spots
    a = rng.uniform(np.pi * 1.15, np.pi * 1.85)
    rr = rng.uniform(0.3, 0.75)
    r = rng.uniform(0.02, 0.04)
    parts.append((ellipse(rr * cw * np.cos(a), top + rr * ch * np.sin(a), r, r, k=10), other, False))
  return parts


def _balloon(rng, hue):
  main, dark, _ = _colours(rng, hue)
  a, b = rng.uniform(0.14, 0.22), rng.uniform(0.18, 0.28)
  cy = -0.2
  string = rng.uniform(0.25, 0.4)
  sway = rng.uniform(-0.08, 0.08)
  parts = [(poly((-0.006, cy + b), (0.006, cy + b), (sway + 0.006, cy + b + string), (sway - 0.006, cy + b + string)),
            (60, 60, 60), False),
           (poly((-0.03, cy + b + 0.035), (0.03, cy + b + 0.035), (0, cy + b - 0.01)), dark, True),
           (ellipse(0, cy, a, b), main, True),
           (ellipse(-0.35 * a, cy - 0.4 * b, 0.15 * a, 0.25 * b, 0.4, k=12), (245, 245, 245), False)]
  return parts


_OBJECTS = (_fish, _tree, _house, _boat, _butterfly, _star, _car, _leaf, _mushroom, _balloon)
_UPRIGHT = {1, 2, 3, 6, 8, 9}  # trees, houses, boats, cars, mushrooms, balloons tilt less


def render(y: int, place: int, rng: np.random.Generator, image_size: int = 64):
  """Draws object family `y` on scene family `place`: (uint8 HWC RGB image, bool HW mask).

  Drawn at twice `image_size` and box-downsampled, as the benchmark is. Uses only `rng`.
  """
  if not 0 <= y < len(OBJECT_NAMES) or not 0 <= place < len(SCENE_NAMES):
    raise SpurjaxError(f"broad: y must be in [0, {len(OBJECT_NAMES) - 1}] and place in "
                       f"[0, {len(SCENE_NAMES) - 1}], got y={y} place={place}")
  if image_size < 8:
    raise SpurjaxError(f"broad: image_size must be >= 8, got {image_size}")
  n = 2 * image_size
  canvas = _scene(place, rng, n)
  hue = float(rng.uniform())
  parts = _OBJECTS[y](rng, hue)
  size = rng.uniform(0.4, 0.75) * n
  tilt = 0.25 if y in _UPRIGHT else 0.8
  angle = rng.uniform(-tilt, tilt)
  flip = -1.0 if rng.random() < 0.5 else 1.0
  centre = rng.uniform(0.35, 0.65, 2) * n
  return draw_object(canvas, parts, hue, size, angle, flip, centre, image_size)


# ----------------------------------------------------------------------------- writing


def _draw_example(image_size: int, seed: int, index: int, y: int, place: int):
  """Image `index` of the corpus: (image, mask, None)."""
  image, mask = render(y, place, image_rng(seed, BROAD_STREAM, index), image_size)
  return image, mask, None


def generate(out_dir: str, *, image_size: int = 64, train_per_combo: int = DEFAULT_TRAIN_PER_COMBO,
             val_per_combo: int = DEFAULT_VAL_PER_COMBO, seed: int = 0, overwrite: bool = False,
             workers: int = 1) -> dict:
  """Writes the corpus into `out_dir`, atomically (built in a sibling temp folder); returns classes.json.

  Every (object, scene) pair gets `train_per_combo` training and `val_per_combo` validation
  images. `workers` > 1 spawns render processes (a calling script needs a main guard).
  """
  if image_size < 8:
    raise SpurjaxError(f"broad: image_size must be >= 8, got {image_size}")
  if train_per_combo < 1 or val_per_combo < 0:
    raise SpurjaxError(f"broad: need train_per_combo >= 1 and val_per_combo >= 0, got "
                       f"{train_per_combo} / {val_per_combo}")
  with staged_folder(out_dir, overwrite, "broad") as tmp:
    jobs, rows = [], []
    for split_id, (split, per) in enumerate((("train", train_per_combo), ("val", val_per_combo))):
      for y, obj in enumerate(OBJECT_NAMES):
        rel = f"{split}/{obj}"
        os.makedirs(os.path.join(tmp, "images", rel))
        os.makedirs(os.path.join(tmp, "masks", rel))
        for place in range(len(SCENE_NAMES)):
          for _ in range(per):
            i = len(jobs)
            image_rel, mask_rel = f"images/{rel}/{i:06d}.png", f"masks/{rel}/{i:06d}.png"
            jobs.append((i, y, place, image_rel, mask_rel))
            rows.append([i, image_rel, y, split_id, place, mask_rel])
    write_images(tmp, _draw_example, (image_size, seed), jobs, workers)
    write_csv(os.path.join(tmp, "metadata.csv"), ["img_id", "img_filename", "y", "split", "place", "mask_filename"],
              rows)
    info = {"classes": list(OBJECT_NAMES), "places": list(SCENE_NAMES), "generator": "spurjax.data.broad",
            "image_size": image_size, "seed": seed, "train_per_combo": train_per_combo,
            "val_per_combo": val_per_combo}
    write_json_atomic(os.path.join(tmp, "classes.json"), info, indent=2)
  return info


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spurjax data broad`: writes the pretraining corpus."""
  p = argparse.ArgumentParser(prog="spurjax data broad", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder (absent or empty)")
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--train-per-combo", type=int, default=DEFAULT_TRAIN_PER_COMBO)
  p.add_argument("--val-per-combo", type=int, default=DEFAULT_VAL_PER_COMBO)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--workers", type=int, default=None, help="render processes (default: min(4, CPUs))")
  args = p.parse_args(argv)
  info = generate(args.out, image_size=args.image_size, train_per_combo=args.train_per_combo,
                  val_per_combo=args.val_per_combo, seed=args.seed, overwrite=args.overwrite,
                  workers=args.workers if args.workers else default_workers())
  combos = len(OBJECT_NAMES) * len(SCENE_NAMES)
  total = combos * (info["train_per_combo"] + info["val_per_combo"])
  print(f"wrote {total} images ({len(OBJECT_NAMES)} objects x {len(SCENE_NAMES)} scenes) to {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except SpurjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
