"""A backbone-pretraining corpus of real photographs: many object families on scene photographs.

`spurjax data photo-broad --out DIR` is the real-photo counterpart of `spurjax data broad` (the
ImageNet stand-in): the object families of `spurjax.data.photo_broad_sources` (Tux Paint stamp
photographs that are no bird, no land mammal and no flower, so the real-photo benchmark's classes
stay unseen) pasted on random crops of wallpaper photographs, as `spurjax.data.compose` does for the
benchmark. It takes the same Debian packages (cached under `--cache`, or from `--debs DIR`) and
writes the folder `spurjax pretrain --data DIR` reads:

  metadata.csv   img_id, img_filename, y (object family), split (0 train, 1 val), place (scene family),
                 mask_filename, object_source, scene_source
  classes.json   family and scene names, counts, settings and the cut-outs of each split
  stats.json     images per family and split, per scene family, source files per family and split
  SOURCES.md     every photograph's package, version, path and credit; licenses/<package>.copyright
  images/<split>/<family>/<id>.png, masks/<split>/<family>/<id>.png (the true object mask, 0/255)

Each family's cut-outs are split (seeded) into disjoint train and val sets (a fifth, at least one,
for val), so val shows objects never seen in training; scenes are shared by both splits. Every
family has `--train-per-family` / `--val-per-family` images, half on each scene family, so the
scene tells nothing about the label. Every image comes from its own random stream (seed, 13, index).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from spurjax.config_util import CommandParser
from spurjax.data import compose, photo_credits
from spurjax.data.drawing import image_rng
from spurjax.data.photo_broad_sources import OBJECTS, SCENES
from spurjax.data.photo_sources import Family, Item, check_all, locate, packages_of
from spurjax.data.photos import add_source_arguments, check_image_size, fetch_sources
from spurjax.data.writer import (
  default_workers,
  staged_folder,
  write_csv,
  write_images,
)
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

IMAGE_STREAM, SPLIT_STREAM = 13, 14  # apart from the other generators' streams
SPLITS = ("train", "val")
VAL_SHARE = 0.2  # of each family's cut-outs
DEFAULT_TRAIN_PER_FAMILY, DEFAULT_VAL_PER_FAMILY = 600, 60


def split_files(fam: Family, index: int, seed: int) -> dict[str, tuple[Item, ...]]:
  """The family's cut-outs split into disjoint train / val sets by a seeded shuffle."""
  n = len(fam.items)
  if n < 2:
    raise SpurjaxError(f"photo-broad: family {fam.name} has {n} files; at least 2 are needed (train, val)")
  k = min(n - 1, max(1, int(round(VAL_SHARE * n))))
  order = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM, index])).permutation(n)
  pick = [fam.items[i] for i in order]
  return {"train": tuple(pick[k:]), "val": tuple(pick[:k])}


def _pool(items: Sequence[Item], roots: Mapping[str, str]) -> tuple:
  return tuple((locate(it, roots), f"{it.package}:{it.path}") for it in items)


def _draw(objects: tuple, scenes: tuple, image_size: int, seed: int, index: int, y: int, place: int):
  """Image `index`: a cut-out of family `y` on a scene of family `place`: (image, mask, (object, scene source))."""
  rng = image_rng(seed, IMAGE_STREAM, index)
  o_path, o_src = objects[y][int(rng.integers(len(objects[y])))]
  s_path, s_src = scenes[place][int(rng.integers(len(scenes[place])))]
  image, mask = compose.compose(compose.scene(s_path, image_size), compose.cutout(o_path), rng, image_size)
  return image, mask, (o_src, s_src)


def _folder(name: str) -> str:
  return name.replace(" ", "-")


def check_settings(image_size: int, train_per_family: int, val_per_family: int) -> None:
  """The corpus's sizes, checked before anything is fetched or written."""
  check_image_size(image_size, "photo-broad")
  if train_per_family < 1 or val_per_family < 0:
    raise SpurjaxError(f"photo-broad: need --train-per-family >= 1 and --val-per-family >= 0, got "
                       f"{train_per_family} / {val_per_family}")


def generate(out_dir: str, roots: Mapping[str, str], *, versions: Optional[Mapping[str, str]] = None,
             debs: Optional[Mapping[str, str]] = None, objects: Sequence[Family] = OBJECTS,
             scenes: Sequence[Family] = SCENES, image_size: int = 64,
             train_per_family: int = DEFAULT_TRAIN_PER_FAMILY, val_per_family: int = DEFAULT_VAL_PER_FAMILY,
             seed: int = 0, overwrite: bool = False, workers: int = 1, log=print) -> dict:
  """Writes the corpus from unpacked packages (`roots`: package -> folder) into `out_dir`, atomically.

  Returns the classes.json dict.
  """
  if len(objects) < 2 or not scenes:
    raise SpurjaxError("photo-broad: at least two object families and one scene family are needed")
  check_settings(image_size, train_per_family, val_per_family)
  names = [f.name for f in objects]
  if len(set(map(_folder, names))) != len(names):
    raise SpurjaxError(f"photo-broad: object family names are not distinct: {', '.join(names)}")
  check_all(list(objects) + list(scenes), roots)
  splits = {fam.name: split_files(fam, i, seed) for i, fam in enumerate(objects)}
  scene_pool = tuple(_pool(f.items, roots) for f in scenes)
  counts = {"train": train_per_family, "val": val_per_family}
  with staged_folder(out_dir, overwrite, "photo-broad") as tmp:
    rows, index = [], 0
    for split_id, split in enumerate(SPLITS):
      pools = tuple(_pool(splits[f.name][split], roots) for f in objects)
      jobs = []
      for y, fam in enumerate(objects):
        rel = f"{split}/{_folder(fam.name)}"
        os.makedirs(os.path.join(tmp, "images", rel))
        os.makedirs(os.path.join(tmp, "masks", rel))
        for j in range(counts[split]):
          jobs.append((index, y, j % len(scenes), f"images/{rel}/{index:06d}.png", f"masks/{rel}/{index:06d}.png"))
          index += 1
      log(f"photo-broad: writing {len(jobs)} {split} images ...")
      extras = write_images(tmp, _draw, (pools, scene_pool, image_size, seed), jobs, workers)
      rows += [[i, img, y, split_id, place, msk, *extra] for (i, y, place, img, msk), extra in zip(jobs, extras)]
    write_csv(os.path.join(tmp, "metadata.csv"), ["img_id", "img_filename", "y", "split", "place", "mask_filename",
                                                 "object_source", "scene_source"], rows)
    scene_splits = {f.name: {"train+val": f.items} for f in scenes}
    photo_credits.write_sources(tmp, list(objects) + list(scenes), {**splits, **scene_splits}, roots,
                                versions or {}, debs or {})
    sources = {f.name: {s: [f"{it.package}:{it.path}" for it in splits[f.name][s]] for s in SPLITS}
               for f in objects}
    info = {"classes": names, "places": [f.name for f in scenes], "generator": "spurjax.data.photo_broad",
            "image_size": image_size, "seed": seed, "train_per_family": train_per_family,
            "val_per_family": val_per_family, "sources": sources,
            "scenes": {f.name: [f"{it.package}:{it.path}" for it in f.items] for f in scenes}}
    write_json_atomic(os.path.join(tmp, "classes.json"), info, indent=2)
    write_json_atomic(os.path.join(tmp, "stats.json"), stats(rows, names, [f.name for f in scenes], splits),
                      indent=2)
  return info


def stats(rows, classes: Sequence[str], places: Sequence[str], splits) -> dict:
  """Images per family, per scene family and in all for each split; source files per family and split."""
  y = np.asarray([r[2] for r in rows], np.int64).reshape(-1)
  split = np.asarray([r[3] for r in rows], np.int64).reshape(-1)
  place = np.asarray([r[4] for r in rows], np.int64).reshape(-1)
  out = {"families": {}, "places": {}, "totals": {}}
  for s, name in enumerate(SPLITS):
    sel = split == s
    out["families"][name] = {c: int(np.sum(sel & (y == k))) for k, c in enumerate(classes)}
    out["places"][name] = {p: int(np.sum(sel & (place == k))) for k, p in enumerate(places)}
    out["totals"][name] = int(np.sum(sel))
  out["source_files"] = {name: {s: len(v) for s, v in by_split.items()} for name, by_split in splits.items()}
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spurjax data photo-broad`: writes the real-photograph pretraining corpus."""
  p = CommandParser(prog="spurjax data photo-broad", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder (absent or empty)")
  p.add_argument("--image-size", type=int, default=64, help="side in pixels (64, 128, 224, ...)")
  p.add_argument("--train-per-family", type=int, default=DEFAULT_TRAIN_PER_FAMILY)
  p.add_argument("--val-per-family", type=int, default=DEFAULT_VAL_PER_FAMILY)
  add_source_arguments(p)
  args = p.parse_args(argv)
  check_settings(args.image_size, args.train_per_family, args.val_per_family)
  roots, versions, found = fetch_sources(args, "photo-broad", packages_of(list(OBJECTS) + list(SCENES)))
  info = generate(args.out, roots, versions=versions, debs=found, image_size=args.image_size,
                  train_per_family=args.train_per_family, val_per_family=args.val_per_family, seed=args.seed,
                  overwrite=args.overwrite, workers=args.workers if args.workers else default_workers())
  total = len(info["classes"]) * (info["train_per_family"] + info["val_per_family"])
  print(f"photo-broad: wrote {total} images ({len(info['classes'])} families) to {os.path.abspath(args.out)}")
  return 0
