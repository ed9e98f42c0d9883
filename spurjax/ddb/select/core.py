"""The pure core of the select stage: per class the K training images with the lowest per-sample
ERM loss (the majority images, where the shortcut holds), found without group labels; ties broken
by position, so the choice is deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from spurjax.errors import SpurjaxError


def select_majority(per_sample_loss, labels, k: int, num_classes: int | None = None) -> dict[int, np.ndarray]:
  """Per class, the positions of the `k` examples with the lowest loss (ties: lower position first).

  Args:
    per_sample_loss: (N,) losses.
    labels: (N,) int class of each example.
    k: how many per class; a class with fewer examples gives all of them.
    num_classes: classes 0..num_classes-1 must each have an example (default: max label + 1).

  Returns:
    {class: int64 positions into the inputs, in increasing loss order}.
  """
  loss = np.asarray(per_sample_loss, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if loss.shape != labels.shape:
    raise SpurjaxError(f"select: {loss.size} losses for {labels.size} labels")
  check_k(k)
  if loss.size == 0:
    raise SpurjaxError("select: no training examples")
  if not np.all(np.isfinite(loss)):
    raise SpurjaxError(f"select: {int(np.sum(~np.isfinite(loss)))} per-sample losses are not finite")
  n_cls = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  out = {}
  for c in range(n_cls):
    pos = np.nonzero(labels == c)[0]
    if pos.size == 0:
      raise SpurjaxError(f"select: class {c} has no training examples")
    order = np.lexsort((pos, loss[pos]))  # by loss, then by position
    out[c] = pos[order[:int(k)]].astype(np.int64)
  return out


def check_k(k) -> None:
  """`ddb.select.k` is a positive integer, else a one-line SpurjaxError."""
  if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or int(k) < 1:
    raise SpurjaxError(f"config ddb.select.k={k!r} must be a positive integer")


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def per_sample_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Cross-entropy of each row (float64, stable)."""
  z = np.asarray(logits, np.float64)
  m = z.max(axis=-1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
  return lse - z[np.arange(len(z)), np.asarray(labels)]


@dataclasses.dataclass(frozen=True)
class Selection:
  """The stage's artefact: per class the selected table indices, Psi_i and their losses."""
  k: int
  selected: dict[int, np.ndarray]
  psi_ref: dict[int, float]
  loss: dict[int, np.ndarray]

  def to_json(self) -> dict:
    return {"k": int(self.k),
            "selected": {str(c): [int(i) for i in v] for c, v in self.selected.items()},
            "psi_ref": {str(c): float(v) for c, v in self.psi_ref.items()},
            "loss": {str(c): [float(x) for x in v] for c, v in self.loss.items()}}

  @classmethod
  def from_json(cls, data: Mapping) -> "Selection":
    return cls(k=int(data["k"]),
               selected={int(c): np.asarray(v, np.int64) for c, v in data["selected"].items()},
               psi_ref={int(c): float(v) for c, v in data["psi_ref"].items()},
               loss={int(c): np.asarray(v, np.float64) for c, v in data.get("loss", {}).items()})


def selection_from_logits(logits, labels, indices, k: int, num_classes: int) -> Selection:
  """The stage's result from ERM logits of the examples `indices` (table rows) with `labels`."""
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  loss = per_sample_ce(logits, labels)
  probs = softmax(logits)
  picked = select_majority(loss, labels, k, num_classes)
  indices = np.asarray(indices)
  return Selection(k=int(k), selected={c: indices[p].astype(np.int64) for c, p in picked.items()},
                   psi_ref={c: float(probs[p, c].mean()) for c, p in picked.items()},
                   loss={c: loss[p] for c, p in picked.items()})


def selected_indices(selected) -> dict[int, np.ndarray]:
  """{class: table indices} from a `Selection` or a {class: indices} mapping."""
  if isinstance(selected, Selection):
    selected = selected.selected
  if not isinstance(selected, Mapping):
    raise SpurjaxError("selection: expected {class: [table indices]}")
  return {int(c): np.asarray(v, np.int64).reshape(-1) for c, v in selected.items()}
