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
