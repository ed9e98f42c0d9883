"""The data of `spurjax bench prior`: the captioned corpus as a Table, the strict judge's corpus
with blob images, in-memory sample tables, the judge's classifier config, and the benchmark's
majority-group images with their object masks at the prior's resolution."""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from spurjax.data.imagefolder import MASK_COLUMN, read_imagefolder, read_mask_paths
from spurjax.data.table import TRAIN, Table
from spurjax.errors import SpurjaxError


def corpus_table(root: str) -> Table:
  """The captioned corpus (file_name, text, y, place) as a Table: every 20th row val, the next test."""
  from spurjax.data.images import read_image
  paths, texts = read_imagefolder(root)
  meta = os.path.join(root, "metadata.csv")
  if not os.path.isfile(meta):
    raise SpurjaxError(f"{meta}: the benchmark needs a metadata.csv with y and place columns")
  with open(meta, newline="") as f:
    rows = list(csv.DictReader(f))
  for c in ("y", "place"):
    if c not in rows[0]:
      raise SpurjaxError(f"{meta}: missing column '{c}' (the benchmark needs object and scene labels)")
  try:
    y = np.asarray([int(r["y"]) for r in rows], np.int32)
    place = np.asarray([int(r["place"]) for r in rows], np.int32)
  except ValueError as e:
    raise SpurjaxError(f"{meta}: y / place must be integers ({e})") from None
  pos = np.arange(len(rows)) % 20
  split = np.where(pos == 0, 1, np.where(pos == 1, 2, 0)).astype(np.int32)
  return Table(name="corpus", refs=paths, y=y, place=place, split=split, num_classes=int(y.max()) + 1,
               num_places=int(place.max()) + 1, read_image=read_image, captions=texts)


def judge_table(corpus: Table, root: str, seed: int) -> Table:
  """The strict judge's data: the corpus (half its objects with pixel noise) plus one blob image per
  corpus image (class K, same split), in memory. Needs the corpus's object masks."""
  from spurjax.bench import blobs
  from spurjax.data.images import read_image
  mask_paths = read_mask_paths(root)
  if mask_paths is None:
    raise SpurjaxError(f"{root}: --judge strict needs the corpus's object masks (column {MASK_COLUMN})")
  images, y, place, split = [], [], [], []
  for i in range(len(corpus)):
    img = read_image(corpus.refs[i])
    m = np.asarray(Image.open(mask_paths[i]).convert("L")) > 0
    if m.shape != img.shape[:2] or not m.any():
      raise SpurjaxError(f"{mask_paths[i]}: mask empty or not the size of its image {corpus.refs[i]}")
    s = int(seed) * 1_000_003 + i
    images += [blobs.noisy_object(img, m, s) if i % 2 else img, blobs.blob_image(img, m, s)]
    y += [int(corpus.y[i]), corpus.num_classes]
    place += [int(corpus.place[i])] * 2
    split += [int(corpus.split[i])] * 2
  arr = np.stack(images)
  return Table(name="corpus+blobs", refs=list(range(len(arr))), y=np.asarray(y, np.int32),
               place=np.asarray(place, np.int32), split=np.asarray(split, np.int32),
               num_classes=corpus.num_classes + 1, num_places=corpus.num_places, read_image=lambda i: arr[i])


def memory_table(images: np.ndarray, y: np.ndarray, place: np.ndarray, num_classes: int, num_places: int) -> Table:
  """In-memory uint8 images as a test-split Table."""
  n = len(images)
  return Table(name="samples", refs=list(range(n)), y=np.asarray(y, np.int32), place=np.asarray(place, np.int32),
               split=np.full(n, 2, np.int32), num_classes=num_classes, num_places=num_places,
               read_image=lambda i: images[i])


def classifier_config(epochs: int, image_size: int, batch_size: int = 64):
  from spurjax.config_base import base_config
  c = base_config()
  c.data.image_size = image_size
  c.data.resize = image_size
  c.data.crop_scale = (0.8, 1.0)
  c.data.cache = True
  c.data.num_threads = 2
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.model.name = "cnn16"
  c.optim.lr = 0.02
  c.optim.schedule = "cosine"
  c.train.batch_size = batch_size
  c.train.eval_batch_size = 128
  c.train.num_epochs = epochs
  c.train.select = "val_avg"
  return c


def object_mask(bench, i: int) -> np.ndarray:
  """The benchmark's object mask of row `i`; an error when it has none."""
  m = bench.mask(i)
  if m is None:
    raise SpurjaxError(f"{bench.name}: image {bench.refs[i]} has no object mask")
  return m


def shrink_mask(mask: np.ndarray, size: int, dilate: int) -> np.ndarray:
  """bool (size, size): `mask` box-shrunk to `size` (a pixel is in when about a quarter of its area is),
  then dilated `dilate` times."""
  m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BOX)) >= 64
  for _ in range(dilate):
    p = np.pad(m, 1)
    m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
  return m


def majority_split(table: Table, n_sources: int, n_learn: int, seed: int):
  """Per class, disjoint sets of majority-group training indices: inpainting sources and TI images."""
  train = table.indices(TRAIN)
  rng = np.random.default_rng([seed, 5])
  sources, learn = {}, {}
  for c in range(table.num_classes):
    idx = train[table.y[train] == c]
    counts = np.bincount(table.place[idx], minlength=table.num_places)
    idx = rng.permutation(idx[table.place[idx] == int(np.argmax(counts))])
    if len(idx) < n_sources + 1:
      raise SpurjaxError(f"{table.name}: class {c} has only {len(idx)} majority training images")
    sources[c], learn[c] = idx[:n_sources], idx[n_sources:n_sources + n_learn]
  return sources, learn
