"""A built-in Waterbirds-like benchmark: drawn birds and flowers on land and water.

`generate` writes a dataset folder in the Waterbirds format read by
`spurjax.data.folder.read_folder`:

  metadata.csv   img_id, img_filename, y, split, place, mask_filename, caption
  classes.json   class nouns, place names, counts and generation settings
  images/<split>/<group>/<id>.png   RGB, image_size x image_size
  masks/<split>/<group>/<id>.png    the true object mask, 0/255
  corpus/        a balanced captioned corpus (HF imagefolder layout:
                 metadata.csv with file_name, text, y, place, mask_file_name;
                 images/*.png, and masks/*.png the object masks, 0/255)

Classes are shape families (0 "bird": ellipse body, head, beak, tail fan, wing;
1 "flower": star-shaped petal ring, centre disc, stem and leaf); both draw their
colours from the same hue range, so colour carries no class information. Places
are background families (0 "land": green/brown mottled ground with patches, grass
blades and stones; 1 "water": blue horizontal waves with glints and floating
leaves); the stones and leaves take object-like colours and outlines, so only the
shape tells the object apart. The background covers
most of the image and is far easier to read than the object's shape, so a model
trained on the skewed train split (95 % of each class on its majority place, in
Waterbirds' group proportions) learns the shortcut. Val and test are balanced.

Every image is drawn from its own random stream, seeded by (seed, stream, index),
so results do not depend on worker count. The corpus uses a different stream, so
its images are disjoint from the benchmark's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from spurjax.data.drawing import (BENCH_STREAM, CORPUS_STREAM, draw_object, ellipse, image_rng, land, poly, rgb,
                                  water)
from spurjax.data.writer import default_workers, staged_folder, write_csv, write_images
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

CLASS_NAMES = ("bird", "flower")
PLACE_NAMES = ("land", "water")
# Waterbirds train counts per group (y, place): y0 on place0 and y1 on place1 are majorities.
WATERBIRDS_TRAIN = (3498, 184, 56, 1057)
DEFAULT_VAL_PER_GROUP = 150
DEFAULT_TEST_PER_GROUP = 300
DEFAULT_CORPUS_PER_COMBO = 250
SPLITS = ("train", "val", "test")
CORPUS_MASK_COLUMN = "mask_file_name"  # the corpus's object-mask column (path relative to corpus/)
_CORPUS_TEMPLATES = (
    "a photo of a {obj} on {place}",
    "{a_colour} {obj} on {place}",
    "a photo of {a_colour} {obj} on {place}",
    "a {obj} on {place}",
    "a picture of a {obj} on {place}",
)


# ----------------------------------------------------------------------------- counts


def _scaled(n: float, scale: float) -> int:
  return max(1, int(round(n * scale)))


def split_counts(scale: float = 1.0, val_per_group: Optional[int] = None,
                 test_per_group: Optional[int] = None) -> dict[str, np.ndarray]:
  """Images per group for each split; group = y * 2 + place.

  Train follows Waterbirds (3498, 184, 56, 1057) times `scale`, at least 1 each;
  val and test are balanced (defaults 150 and 300 per group, times `scale`).
  """
  if not scale > 0:
    raise SpurjaxError(f"synth: scale must be > 0, got {scale}")
  val = _scaled(DEFAULT_VAL_PER_GROUP, scale) if val_per_group is None else int(val_per_group)
  test = _scaled(DEFAULT_TEST_PER_GROUP, scale) if test_per_group is None else int(test_per_group)
  if val < 1 or test < 1:
    raise SpurjaxError(f"synth: val/test per group must be >= 1, got {val}/{test}")
  return {
      "train": np.asarray([_scaled(c, scale) for c in WATERBIRDS_TRAIN], np.int64),
      "val": np.full(4, val, np.int64),
      "test": np.full(4, test, np.int64),
  }


def majority_fraction(counts: np.ndarray) -> np.ndarray:
  """Per class, the fraction of its images on its majority place (y0: place 0, y1: place 1)."""
  c = np.asarray(counts).reshape(2, 2)
  return np.asarray([c[0, 0] / c[0].sum(), c[1, 1] / c[1].sum()])


def group_name(y: int, place: int) -> str:
  return f"{CLASS_NAMES[y]}_{PLACE_NAMES[place]}"


def caption(y: int, place: int) -> str:
  return f"a photo of a {CLASS_NAMES[y]} on {PLACE_NAMES[place]}"


# ----------------------------------------------------------------------------- drawing
# Objects are lists of parts (`spurjax.data.drawing`); the object faces +x before the pose.


def _bird(rng: np.random.Generator, hue: float) -> list:
  a, b = rng.uniform(0.26, 0.35), rng.uniform(0.11, 0.17)
  sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0)
  body = rgb(hue, sat, val)
  dark = rgb(hue + rng.uniform(-0.05, 0.05), sat, val * rng.uniform(0.45, 0.7))
  beak = rgb(rng.uniform(0.0, 0.16), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
  parts = []
  if rng.random() < 0.7:  # legs
    leg = rng.uniform(0.08, 0.16)
    for x in (-0.25 * a, 0.15 * a):
      lean = rng.uniform(-0.04, 0.04)
      parts.append((poly((x - 0.012, 0.8 * b), (x + 0.012, 0.8 * b), (x + lean + 0.012, b + leg),
                          (x + lean - 0.012, b + leg)), beak, False))
  tl, tw, lift = rng.uniform(0.13, 0.24), rng.uniform(0.06, 0.13), rng.uniform(-0.02, 0.08)
  parts.append((poly((-0.7 * a, -0.35 * b), (-a - tl, -tw - lift), (-a - 0.75 * tl, -lift),
                      (-a - tl, tw - lift), (-0.7 * a, 0.35 * b)), dark, True))
  parts.append((ellipse(0, 0, a, b), body, True))
  if rng.random() < 0.5:  # raised wing: a triangle above the back
    wh = rng.uniform(0.14, 0.26)
    tip = rng.uniform(-0.55, -0.05) * a
    parts.append((poly((-0.35 * a, -0.4 * b), (0.35 * a, -0.5 * b), (tip, -b - wh)), dark, True))
  else:  # folded wing: a darker ellipse on the body
    parts.append((ellipse(-0.15 * a, -0.1 * b, 0.6 * a, 0.5 * b, rng.uniform(-0.3, 0.1)), dark, True))
  r = rng.uniform(0.075, 0.115)
  hx, hy = 0.85 * a, -0.75 * b - 0.3 * r
  bl = rng.uniform(0.06, 0.14)
  droop = rng.uniform(-0.02, 0.04)
  parts.append((poly((hx + 0.6 * r, hy - 0.35 * r), (hx + r + bl, hy + droop), (hx + 0.6 * r, hy + 0.45 * r)),
                beak, True))
  parts.append((ellipse(hx, hy, r, r), body, True))
  parts.append((ellipse(hx + 0.35 * r, hy - 0.2 * r, 0.22 * r, 0.22 * r, k=12), (15, 15, 15), False))
  return parts


def _flower(rng: np.random.Generator, hue: float) -> list:
  radius = rng.uniform(0.23, 0.32)
  inner = rng.uniform(0.35, 0.6)
  petals = int(rng.integers(5, 9))
  sharp = rng.uniform(0.5, 2.0)
  sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0)
  stem_len = rng.uniform(0.28, 0.45)
  stem = rgb(rng.uniform(0.05, 0.40), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.55))
  cy = -0.5 * stem_len  # flower head above the origin, stem below
  bend = rng.uniform(-0.08, 0.08)
  parts = [(poly((-0.015, cy), (0.015, cy), (bend + 0.015, cy + radius + stem_len),
                  (bend - 0.015, cy + radius + stem_len)), stem, True)]
  if rng.random() < 0.8:  # a leaf on the stem
    side = 1.0 if rng.random() < 0.5 else -1.0
    ly = cy + radius + rng.uniform(0.35, 0.7) * stem_len
    ll, lw = rng.uniform(0.08, 0.14), rng.uniform(0.03, 0.05)
    parts.append((ellipse(bend * 0.5 + side * ll, ly, ll, lw, side * rng.uniform(-0.6, -0.2)), stem, True))
  t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
  r = radius * (inner + (1 - inner) * np.abs(np.cos(petals * (t + rng.uniform(0, np.pi)) / 2)) ** sharp)
  parts.append((np.stack([r * np.cos(t), cy + r * np.sin(t)], axis=1), rgb(hue, sat, val), True))
  centre = rgb(hue + rng.uniform(0.35, 0.65), rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.9))
  cr = radius * inner * rng.uniform(0.45, 0.7)
  parts.append((ellipse(0, cy, cr, cr), centre, True))
  return parts


def colour_word(hue: float) -> str:
  """A colour name for a saturated hue in [0, 1)."""
  for bound, word in ((0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"),
                      (0.53, "teal"), (0.70, "blue"), (0.80, "purple"), (0.93, "pink")):
    if hue % 1.0 < bound:
      return word
  return "red"


def _render(y: int, place: int, rng: np.random.Generator, image_size: int, object_rng=None):
  """Returns (uint8 HWC image, bool HW mask, object hue). The scene takes the first draws of `rng`, the
  object the following ones, or those of `object_rng` when given (the same scene with another object)."""
  n = 2 * image_size
  canvas = (land if place == 0 else water)(rng, n)
  rng = rng if object_rng is None else object_rng
  hue = float(rng.uniform())
  parts = (_bird if y == 0 else _flower)(rng, hue)
  size = rng.uniform(0.42, 0.62) * n
  angle = rng.uniform(-0.5, 0.5) if y == 0 else rng.uniform(-0.4, 0.4)
  flip = -1.0 if rng.random() < 0.5 else 1.0
  centre = rng.uniform(0.36, 0.64, 2) * n
  image, mask_arr = draw_object(canvas, parts, hue, size, angle, flip, centre, image_size)
  return image, mask_arr, hue


def render(y: int, place: int, rng: np.random.Generator, image_size: int = 64):
  """Draws one example of class `y` on place `place`: (uint8 HWC RGB image, bool HW mask).

  Drawn at twice `image_size` and box-downsampled (antialiased). Uses only `rng`.
  """
  if y not in (0, 1) or place not in (0, 1):
    raise SpurjaxError(f"synth: y and place must be 0 or 1, got y={y} place={place}")
  if image_size < 8:
    raise SpurjaxError(f"synth: image_size must be >= 8, got {image_size}")
  image, mask, _ = _render(y, place, rng, image_size)
  return image, mask


def image_origin(path: str) -> tuple[dict, int]:
  """(classes.json of the benchmark, image index) of a benchmark image file `.../images/<split>/<group>/<index>.png`."""
  path = str(path)
  root, sep, _ = path.replace(os.sep, "/").rpartition("/images/")
  stem = os.path.splitext(os.path.basename(path))[0]
  info_path = os.path.join(root, "classes.json")
  if not sep or not stem.isdigit() or not os.path.isfile(info_path):
    raise SpurjaxError(f"synth: {path} is not an image of a benchmark written by `spurjax data synth` "
                       f"(expected <root>/images/<split>/<group>/<index>.png beside <root>/classes.json)")
  with open(info_path) as f:
    return json.load(f), int(stem)


def redraw(info: dict, index: int, y: int, place: int, object_seed=None):
  """Benchmark image `index` (of the benchmark whose classes.json is `info`) drawn again on the same scene,
  pixel for pixel, with an object of class `y`: the object's draws come from `object_seed` (any
  `np.random.SeedSequence` entropy), or with None from the image's own stream (the image itself when `y`
  is its class). Returns (uint8 HWC image, bool HW mask of the object drawn)."""
  if info.get("generator") != "spurjax.data.synth":
    raise SpurjaxError(f"synth: redraw needs a benchmark written by `spurjax data synth` (classes.json generator "
                       f"{info.get('generator')!r})")
  if y not in (0, 1) or place not in (0, 1):
    raise SpurjaxError(f"synth: y and place must be 0 or 1, got y={y} place={place}")
  rng = image_rng(int(info["seed"]), BENCH_STREAM, int(index))
  object_rng = None if object_seed is None else np.random.default_rng(np.random.SeedSequence(object_seed))
  image, mask, _ = _render(y, place, rng, int(info["image_size"]), object_rng)
  return image, mask


# ----------------------------------------------------------------------------- writing


def _draw_example(image_size: int, seed: int, stream: int, index: int, y: int, place: int):
  """Image `index` of `stream`: (image, mask, caption); corpus captions are drawn after the image."""
  rng = image_rng(seed, stream, index)
  image, mask, hue = _render(y, place, rng, image_size)
  if stream != CORPUS_STREAM:
    return image, mask, caption(y, place)
  template = _CORPUS_TEMPLATES[int(rng.integers(len(_CORPUS_TEMPLATES)))]
  colour = colour_word(hue)
  a_colour = ("an " if colour[0] in "aeiou" else "a ") + colour
  return image, mask, template.format(obj=CLASS_NAMES[y], place=PLACE_NAMES[place], a_colour=a_colour)


def _write_benchmark(tmp: str, counts: dict, image_size: int, seed: int, workers: int) -> None:
  jobs, rows = [], []
  index = 0
  for split_id, split in enumerate(SPLITS):
    for g, count in enumerate(counts[split]):
      y, place = divmod(g, 2)
      rel = f"{split}/{group_name(y, place)}"
      os.makedirs(os.path.join(tmp, "images", rel))
      os.makedirs(os.path.join(tmp, "masks", rel))
      for _ in range(int(count)):
        image_rel, mask_rel = f"images/{rel}/{index:06d}.png", f"masks/{rel}/{index:06d}.png"
        jobs.append((index, y, place, image_rel, mask_rel))
        rows.append([index, image_rel, y, split_id, place, mask_rel])
        index += 1
  captions = write_images(tmp, _draw_example, (image_size, seed, BENCH_STREAM), jobs, workers)
  write_csv(os.path.join(tmp, "metadata.csv"),
            ["img_id", "img_filename", "y", "split", "place", "mask_filename", "caption"],
            [row + [cap] for row, cap in zip(rows, captions)])


def _write_corpus(tmp: str, per_combo: int, image_size: int, seed: int, workers: int) -> None:
  root = os.path.join(tmp, "corpus")
  os.makedirs(os.path.join(root, "images"))
  os.makedirs(os.path.join(root, "masks"))
  jobs = []
  for g in range(4):
    y, place = divmod(g, 2)
    for _ in range(per_combo):
      index = len(jobs)
      jobs.append((index, y, place, f"images/{index:06d}.png", f"masks/{index:06d}.png"))
  captions = write_images(root, _draw_example, (image_size, seed, CORPUS_STREAM), jobs, workers)
  write_csv(os.path.join(root, "metadata.csv"), ["file_name", "text", "y", "place", CORPUS_MASK_COLUMN],
            [[rel, cap, y, place, mask_rel] for (_, y, place, rel, mask_rel), cap in zip(jobs, captions)])


def generate(out_dir: str, *, image_size: int = 64, scale: float = 1.0, seed: int = 0,
             val_per_group: Optional[int] = None, test_per_group: Optional[int] = None,
             corpus_per_combo: Optional[int] = None, overwrite: bool = False,
             workers: int = 1) -> dict:
  """Writes the benchmark (and corpus) into `out_dir`, atomically; returns the classes.json dict.

  Args:
    out_dir: target folder; must be absent or empty unless `overwrite`.
    image_size: side in pixels (drawn at twice this and downsampled).
    scale: multiplies every group count (at least 1 image per group).
    seed: all content is a function of the seed.
    val_per_group / test_per_group: balanced split sizes (default 150 / 300 times scale).
    corpus_per_combo: corpus images per (class, place); default 250 times scale, 0 for none.
    overwrite: replace an existing non-empty `out_dir`.
    workers: render processes. Above 1 they are spawned, so a calling script needs an
      `if __name__ == "__main__":` guard; the CLI defaults to min(4, CPU count).
  The dataset is built in a sibling `<out_dir>.tmp-*` folder and renamed into place at the end.
  """
  if image_size < 8:
    raise SpurjaxError(f"synth: image_size must be >= 8, got {image_size}")
  counts = split_counts(scale, val_per_group, test_per_group)
  per_combo = _scaled(DEFAULT_CORPUS_PER_COMBO, scale) if corpus_per_combo is None else int(corpus_per_combo)
  if per_combo < 0:
    raise SpurjaxError(f"synth: corpus_per_combo must be >= 0, got {per_combo}")
  with staged_folder(out_dir, overwrite, "synth") as tmp:
    _write_benchmark(tmp, counts, image_size, seed, workers)
    if per_combo > 0:
      _write_corpus(tmp, per_combo, image_size, seed, workers)
    info = {
        "classes": list(CLASS_NAMES),
        "places": list(PLACE_NAMES),
        "generator": "spurjax.data.synth",
        "image_size": image_size,
        "scale": scale,
        "seed": seed,
        "counts": {k: v.tolist() for k, v in counts.items()},
        "corpus_per_combo": per_combo,
    }
    write_json_atomic(os.path.join(tmp, "classes.json"), info, indent=2)
  return info


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spurjax data synth`: writes the built-in benchmark."""
  p = argparse.ArgumentParser(prog="spurjax data synth", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder (absent or empty)")
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--scale", type=float, default=1.0, help="multiplies every group count")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--val-per-group", type=int, default=None)
  p.add_argument("--test-per-group", type=int, default=None)
  p.add_argument("--corpus-per-combo", type=int, default=None)
  p.add_argument("--corpus", action=argparse.BooleanOptionalAction, default=True,
                 help="also write the balanced captioned corpus")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--workers", type=int, default=None, help="render processes (default: min(4, CPUs))")
  args = p.parse_args(argv)
  info = generate(args.out, image_size=args.image_size, scale=args.scale, seed=args.seed,
                  val_per_group=args.val_per_group, test_per_group=args.test_per_group,
                  corpus_per_combo=args.corpus_per_combo if args.corpus else 0,
                  overwrite=args.overwrite,
                  workers=args.workers if args.workers else default_workers())
  total = sum(sum(v) for v in info["counts"].values())
  print(f"wrote {total} images ({info['corpus_per_combo'] * 4} corpus) to {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except SpurjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
