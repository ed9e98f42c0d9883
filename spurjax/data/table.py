"""The dataset table every reader produces: labels in numpy, images fetched by index.

A `Table` is what the rest of spurjax sees of a dataset: per example the class `y`,
the spurious attribute `place`, the `split` (0 train, 1 val, 2 test), an image
reference and optionally a mask reference. Group = (y, place), encoded as
`y * num_places + place`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
SPLIT_IDS = {v: k for k, v in SPLIT_NAMES.items()}


@dataclasses.dataclass(frozen=True)
class Table:
  """A labelled image dataset.

  Attributes:
    name: a human-readable name (e.g. the folder).
    refs: per example, what `read_image` takes (a file path for folder datasets,
      an integer index for in-memory / tfds sources).
    y, place, split: int32 arrays of equal length.
    num_classes, num_places: K classes and the number of attribute values.
    read_image: ref -> uint8 HWC RGB array.
    mask_refs: optional per-example mask references (None entries allowed).
    read_mask: ref -> bool HW array.
    captions: optional per-example text.
    class_names / place_names: optional human-readable names.
  """

  name: str
  refs: Sequence
  y: np.ndarray
  place: np.ndarray
  split: np.ndarray
  num_classes: int
  num_places: int
  read_image: Callable[[object], np.ndarray]
  mask_refs: Optional[Sequence] = None
  read_mask: Optional[Callable[[object], np.ndarray]] = None
  captions: Optional[Sequence[str]] = None
  class_names: Optional[Sequence[str]] = None
  place_names: Optional[Sequence[str]] = None

  def __len__(self) -> int:
    return len(self.y)

  @property
  def num_groups(self) -> int:
    return self.num_classes * self.num_places

  @property
  def group(self) -> np.ndarray:
    return (self.y * self.num_places + self.place).astype(np.int32)

  def indices(self, split: int | str) -> np.ndarray:
    split = SPLIT_IDS[split] if isinstance(split, str) else split
    return np.nonzero(self.split == split)[0]

  def group_counts(self, split: int | str) -> np.ndarray:
    idx = self.indices(split)
    return np.bincount(self.group[idx], minlength=self.num_groups)

  def image(self, i: int) -> np.ndarray:
    return self.read_image(self.refs[i])

  def mask(self, i: int) -> Optional[np.ndarray]:
    if self.mask_refs is None or self.mask_refs[i] is None or self.read_mask is None:
      return None
    return self.read_mask(self.mask_refs[i])


GENERATED = 3  # split id of generated examples appended to a dataset (not train/val/test)


def concat(first: Table, second: Table, *, second_split: Optional[int] = None, name: Optional[str] = None) -> Table:
  """Rows of `first` then `second` (e.g. a dataset plus generated images).

  `second_split` overrides the split of every row of `second` (GENERATED keeps them out of the
  train / val / test metrics). Class and attribute counts are the larger of the two.
  """
  n1 = len(first)
  refs = [(0, r) for r in first.refs] + [(1, r) for r in second.refs]
  readers = (first.read_image, second.read_image)
  split2 = second.split if second_split is None else np.full(len(second), second_split, np.int32)

  def read_image(ref):
    which, r = ref
    return readers[which](r)

  masks = None
  read_mask = None
  if first.mask_refs is not None or second.mask_refs is not None:
    m1 = list(first.mask_refs) if first.mask_refs is not None else [None] * n1
    m2 = list(second.mask_refs) if second.mask_refs is not None else [None] * len(second)
    masks = [None if m is None else (0, m) for m in m1] + [None if m is None else (1, m) for m in m2]
    mreaders = (first.read_mask, second.read_mask)
    read_mask = lambda ref: mreaders[ref[0]](ref[1])
  caps = None
  if first.captions is not None or second.captions is not None:
    caps = list(first.captions or [""] * n1) + list(second.captions or [""] * len(second))
  return Table(
      name=name or first.name, refs=refs, y=np.concatenate([first.y, second.y]).astype(np.int32),
      place=np.concatenate([first.place, second.place]).astype(np.int32),
      split=np.concatenate([first.split, split2]).astype(np.int32),
      num_classes=max(first.num_classes, second.num_classes), num_places=max(first.num_places, second.num_places),
      read_image=read_image, mask_refs=masks, read_mask=read_mask, captions=caps,
      class_names=first.class_names, place_names=first.place_names)
