"""A Waterbirds-format benchmark made of real photographs: animals and flowers on foliage and man-made scenes.

`spurjax data photos --out DIR` downloads the pinned Debian packages of `spurjax.data.photo_sources`
(or takes their .deb files from `--debs DIR`), unpacks them and writes:

  metadata.csv   img_id, img_filename, y, split, place, mask_filename, caption, object_source, scene_source
  classes.json   class and place names, counts, settings and the files of each split
  stats.json     images per group and split, the majority fraction, source files per family and split
  SOURCES.md     every photograph's package, version, path and credit; licenses/<package>.copyright
  images/<split>/<group>/<id>.png, masks/<split>/<group>/<id>.png (the true object mask, 0/255)
  corpus/        the prior's captioned corpus: metadata.csv (file_name, text) and images/*.png

Each image is a random crop of a scene photograph with one cut-out photograph pasted on it
(`spurjax.data.compose`); y is the object family (0 animal, 1 flower), place the scene family
(0 foliage, 1 man-made). Each family's files are split (seeded) into disjoint train, val and test
sets (a fifth each for val and test, at least one), so val and test show objects and scenes never
seen in training. Train follows Waterbirds' shape: class sizes 3682 : 1113 and `majority` (0.95)
of each class on its own scene family (animals on foliage, flowers on man-made scenes): 2918 /
154 / 46 / 882 at the default 4000. Val and test are group-balanced. The corpus has every (class,
place) pair equally often, is made from train files only in an image stream of its own, and has
no mask column. Every image comes from its own random stream seeded by (seed, stream, index).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from spurjax.config_util import CommandParser
from spurjax.data import compose, debian, photo_credits
from spurjax.data.drawing import image_rng
from spurjax.data.photo_sources import (
  OBJECTS,
  SCENES,
  Family,
  Item,
  check_all,
  locate,
  packages_of,
)
from spurjax.data.writer import (
  check_target,
  default_workers,
  staged_folder,
  write_csv,
  write_images,
)
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

BENCH_STREAM, CORPUS_STREAM, SPLIT_STREAM = 10, 11, 12  # apart from the drawn generators' streams
SPLITS = ("train", "val", "test")
CLASS_SHARE = (3682, 1113)  # Waterbirds' train images per class
DEFAULT_TRAIN, DEFAULT_VAL_PER_GROUP, DEFAULT_TEST_PER_GROUP = 4000, 250, 500
DEFAULT_MAJORITY, DEFAULT_CORPUS_PER_COMBO = 0.95, 500
EVAL_SHARE = 0.2  # of each family's files, for val and for test
_CORPUS_TEMPLATES = ("a photo of {a_obj} {scene}", "{a_obj} {scene}", "a picture of {a_obj} {scene}",
                     "a photo of {a_family}, {a_obj}, {scene}")


def a_an(noun: str) -> str:
  return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def caption(obj: str, scene: str) -> str:
  return f"a photo of {a_an(obj)} {scene}"


def split_files(fam: Family, index: int, seed: int) -> dict[str, tuple[Item, ...]]:
  """The family's files split into disjoint train / val / test sets by a seeded shuffle."""
  n = len(fam.items)
  if n < 3:
    raise SpurjaxError(f"photos: family {fam.name} has {n} files; at least 3 are needed (train, val, test)")
  k = max(1, int(round(EVAL_SHARE * n)))
  order = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAM, index])).permutation(n)
  pick = [fam.items[i] for i in order]
  return {"train": tuple(pick[2 * k:]), "val": tuple(pick[:k]), "test": tuple(pick[k:2 * k])}


def train_counts(total: int, majority: float) -> np.ndarray:
  """Train images per group (y * 2 + place): classes in Waterbirds' 3682 : 1113, `majority` of each on its own place."""
  if total < 4:
    raise SpurjaxError(f"photos: --train must be >= 4, got {total}")
  if not 0.5 <= majority <= 1.0:
    raise SpurjaxError(f"photos: --majority must lie in [0.5, 1], got {majority}")
  n0 = int(round(total * CLASS_SHARE[0] / sum(CLASS_SHARE)))
  sizes = (n0, total - n0)
  major = [int(round(majority * s)) for s in sizes]
  return np.asarray([major[0], sizes[0] - major[0], sizes[1] - major[1], major[1]], np.int64)


def check_image_size(image_size: int, what: str) -> None:
  if not 16 <= image_size <= 1024:
    raise SpurjaxError(f"{what}: --image-size must lie in [16, 1024], got {image_size}")


def check_settings(image_size: int, train: int, val_per_group: int, test_per_group: int, majority: float,
                   corpus_per_combo: int) -> None:
  """The benchmark's sizes, checked before anything is fetched or written."""
  check_image_size(image_size, "photos")
  train_counts(train, majority)
  if val_per_group < 1 or test_per_group < 1 or corpus_per_combo < 0:
    raise SpurjaxError(f"photos: val/test per group must be >= 1 and corpus per combo >= 0, got "
                       f"{val_per_group}/{test_per_group}/{corpus_per_combo}")


def _pool(items: Sequence[Item], roots: Mapping[str, str]) -> tuple:
  return tuple((locate(it, roots), it.phrase, f"{it.package}:{it.path}") for it in items)


def _pools(splits, split: str, objects, scenes, roots) -> tuple:
  """What `_draw` picks from for `split`: (per class, per place: (path, phrase, source) tuples; class names)."""
  return (tuple(_pool(splits[f.name][split], roots) for f in objects),
          tuple(_pool(splits[f.name][split], roots) for f in scenes), tuple(f.name for f in objects))


def _draw(pools: tuple, image_size: int, seed: int, stream: int, index: int, y: int, place: int):
  """Image `index` of `stream`: (image, mask, (caption, object source, scene source))."""
  objects, scenes, families = pools
  rng = image_rng(seed, stream, index)
  o_path, o_noun, o_src = objects[y][int(rng.integers(len(objects[y])))]
  s_path, s_phrase, s_src = scenes[place][int(rng.integers(len(scenes[place])))]
  image, mask = compose.compose(compose.scene(s_path, image_size), compose.cutout(o_path), rng, image_size)
  if stream != CORPUS_STREAM:
    return image, mask, (caption(o_noun, s_phrase), o_src, s_src)
  text = _CORPUS_TEMPLATES[int(rng.integers(len(_CORPUS_TEMPLATES)))].format(
      a_obj=a_an(o_noun), scene=s_phrase, a_family=a_an(families[y]))
  return image, mask, (text, o_src, s_src)


def _group(classes, places, y: int, place: int) -> str:
  return f"{classes[y]}_{places[place]}".replace("-", "")


def generate(out_dir: str, roots: Mapping[str, str], *, versions: Optional[Mapping[str, str]] = None,
             debs: Optional[Mapping[str, str]] = None, objects: Sequence[Family] = OBJECTS,
             scenes: Sequence[Family] = SCENES, image_size: int = 64, train: int = DEFAULT_TRAIN,
             val_per_group: int = DEFAULT_VAL_PER_GROUP, test_per_group: int = DEFAULT_TEST_PER_GROUP,
             majority: float = DEFAULT_MAJORITY, corpus_per_combo: int = DEFAULT_CORPUS_PER_COMBO, seed: int = 0,
             overwrite: bool = False, workers: int = 1, log=print) -> dict:
  """Writes the benchmark from unpacked packages (`roots`: package -> folder) into `out_dir`, atomically.

  `objects` and `scenes` are two families each (y and place); returns the classes.json dict.
  """
  if len(objects) != 2 or len(scenes) != 2:
    raise SpurjaxError("photos: exactly two object families and two scene families are needed")
  check_settings(image_size, train, val_per_group, test_per_group, majority, corpus_per_combo)
  families = list(objects) + list(scenes)
  check_all(families, roots)
  splits = {fam.name: split_files(fam, i, seed) for i, fam in enumerate(families)}
  counts = {"train": train_counts(train, majority), "val": np.full(4, val_per_group, np.int64),
            "test": np.full(4, test_per_group, np.int64)}
  classes, places = [f.name for f in objects], [f.name for f in scenes]
  with staged_folder(out_dir, overwrite, "photos") as tmp:
    rows, index = [], 0
    for split_id, split in enumerate(SPLITS):
      pools = _pools(splits, split, objects, scenes, roots)
      jobs = []
      for g, count in enumerate(counts[split]):
        y, place = divmod(g, 2)
        rel = f"{split}/{_group(classes, places, y, place)}"
        os.makedirs(os.path.join(tmp, "images", rel))
        os.makedirs(os.path.join(tmp, "masks", rel))
        for _ in range(int(count)):
          jobs.append((index, y, place, f"images/{rel}/{index:06d}.png", f"masks/{rel}/{index:06d}.png"))
          index += 1
      log(f"photos: writing {len(jobs)} {split} images ...")
      extras = write_images(tmp, _draw, (pools, image_size, seed, BENCH_STREAM), jobs, workers)
      rows += [[i, img, y, split_id, place, msk, *extra] for (i, y, place, img, msk), extra in zip(jobs, extras)]
    write_csv(os.path.join(tmp, "metadata.csv"), ["img_id", "img_filename", "y", "split", "place", "mask_filename",
                                                 "caption", "object_source", "scene_source"], rows)
    if corpus_per_combo > 0:
      log(f"photos: writing the captioned corpus ({4 * corpus_per_combo} images) ...")
      _write_corpus(os.path.join(tmp, "corpus"), splits, objects, scenes, roots, corpus_per_combo, image_size,
                    seed, workers)
    photo_credits.write_sources(tmp, families, splits, roots, versions or {}, debs or {})
    sources = {f.name: {s: [f"{it.package}:{it.path}" for it in splits[f.name][s]] for s in SPLITS}
               for f in families}
    info = {"classes": classes, "places": places, "generator": "spurjax.data.photos", "image_size": image_size,
            "seed": seed, "majority": majority, "counts": {k: v.tolist() for k, v in counts.items()},
            "corpus_per_combo": corpus_per_combo, "sources": sources}
    write_json_atomic(os.path.join(tmp, "classes.json"), info, indent=2)
    write_json_atomic(os.path.join(tmp, "stats.json"), stats(counts, classes, places, splits, corpus_per_combo),
                      indent=2)
  return info


def stats(counts: Mapping[str, np.ndarray], classes, places, splits, corpus_per_combo: int) -> dict:
  """Images per group and split, each class's fraction on its majority place, source files per family and split."""
  train = np.asarray(counts["train"]).reshape(2, 2)
  return {
      "groups": {s: {_group(classes, places, *divmod(g, 2)): int(c) for g, c in enumerate(counts[s])}
                 for s in SPLITS},
      "totals": {s: int(np.sum(counts[s])) for s in SPLITS},
      "train_majority_fraction": {classes[0]: float(train[0, 0] / train[0].sum()),
                                  classes[1]: float(train[1, 1] / train[1].sum())},
      "source_files": {name: {s: len(v) for s, v in by_split.items()} for name, by_split in splits.items()},
      "corpus_per_combo": corpus_per_combo,
  }


def _write_corpus(root: str, splits, objects, scenes, roots, per_combo: int, image_size: int, seed: int,
                  workers: int) -> None:
  os.makedirs(os.path.join(root, "images"))
  pools = _pools(splits, "train", objects, scenes, roots)
  jobs = [(i, g // 2, g % 2, f"images/{i:06d}.png", None)
          for i, g in enumerate(g for g in range(4) for _ in range(per_combo))]
  extras = write_images(root, _draw, (pools, image_size, seed, CORPUS_STREAM), jobs, workers)
  write_csv(os.path.join(root, "metadata.csv"), ["file_name", "text"],
            [[rel, extra[0]] for (_, _, _, rel, _), extra in zip(jobs, extras)])


def add_source_arguments(p) -> None:
  """The options of the photo commands that say where the Debian packages come from and where output goes."""
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache", default=debian.DEFAULT_CACHE, help="where .deb files are downloaded and unpacked")
  p.add_argument("--debs", default=None, help="a folder of already downloaded .deb files (nothing is downloaded)")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--workers", type=int, default=None, help="render processes (default: min(4, CPUs))")


def fetch_sources(args, what: str, packages: Sequence[str]):
  """(roots, versions, deb paths) for a photo command's parsed `args`, after checking `--debs` and `--out`."""
  cache = os.path.abspath(os.path.expanduser(args.cache))
  debs = os.path.abspath(os.path.expanduser(args.debs)) if args.debs else None
  if debs is not None and not os.path.isdir(debs):
    raise SpurjaxError(f"{what}: --debs folder not found: {debs}")
  check_target(os.path.abspath(args.out), args.overwrite, what)  # before any download
  return sources_from_debian(cache, debs, packages)


def sources_from_debian(cache: str, debs: Optional[str], packages: Sequence[str], log=print):
  """(roots, versions, deb paths) of `packages`: fetched (or taken from `debs`) and unpacked under `cache`."""
  log(f"photos: {'reading .deb files in ' + debs if debs else 'fetching packages into ' + cache}: "
      f"{', '.join(packages)}")
  found = debian.fetch(packages, cache, debs)
  roots = {p: debian.unpack(deb, cache) for p, deb in found.items()}
  versions = {p: debian.version(deb) for p, deb in found.items()}
  return roots, versions, found


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spurjax data photos`: writes the real-photograph benchmark."""
  p = CommandParser(prog="spurjax data photos", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder (absent or empty)")
  p.add_argument("--image-size", type=int, default=64, help="side in pixels (64, 128, 224, ...)")
  p.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training images in all")
  p.add_argument("--val-per-group", type=int, default=DEFAULT_VAL_PER_GROUP)
  p.add_argument("--test-per-group", type=int, default=DEFAULT_TEST_PER_GROUP)
  p.add_argument("--majority", type=float, default=DEFAULT_MAJORITY,
                 help="fraction of each class's training images on its own scene family")
  p.add_argument("--corpus-per-combo", type=int, default=DEFAULT_CORPUS_PER_COMBO,
                 help="corpus images per (class, place); 0 for none")
  add_source_arguments(p)
  args = p.parse_args(argv)
  check_settings(args.image_size, args.train, args.val_per_group, args.test_per_group, args.majority,
                 args.corpus_per_combo)
  roots, versions, found = fetch_sources(args, "photos", packages_of(list(OBJECTS) + list(SCENES)))
  info = generate(args.out, roots, versions=versions, debs=found, image_size=args.image_size, train=args.train,
                  val_per_group=args.val_per_group, test_per_group=args.test_per_group, majority=args.majority,
                  corpus_per_combo=args.corpus_per_combo, seed=args.seed, overwrite=args.overwrite,
                  workers=args.workers if args.workers else default_workers())
  total = sum(sum(v) for v in info["counts"].values())
  print(f"photos: wrote {total} images ({4 * info['corpus_per_combo']} corpus) to {os.path.abspath(args.out)}")
  return 0
