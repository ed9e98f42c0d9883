"""Group metrics from per-group correct / total counts.

Counts are what processes and batches add up (never averages), so the metrics of a
sharded or multi-process evaluation are exact.

Averages, always labelled:
  - `average_accuracy`: plain accuracy over every example of the split.
  - `average_accuracy_train_weighted`: per-group accuracy weighted by the *training* group
    proportions (what the Waterbirds / CelebA literature calls "average accuracy").
  - `mean_group_accuracy`: unweighted mean over the groups present.
`worst_group_accuracy` is the lowest accuracy among groups with at least one example
(the lowest-accuracy group, not the smallest group).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def group_counts(pred: np.ndarray, y: np.ndarray, group: np.ndarray, num_groups: int):
  """(correct, total) per group from per-example predictions."""
  pred, y, group = (np.asarray(a) for a in (pred, y, group))
  correct = np.bincount(group, weights=(pred == y).astype(np.float64), minlength=num_groups)
  total = np.bincount(group, minlength=num_groups).astype(np.float64)
  return correct, total


def group_metrics(correct: Sequence[float], total: Sequence[float], num_places: int,
                  train_total: Optional[Sequence[float]] = None) -> dict:
  """The report dict of one split (see module docstring for the keys)."""
  correct = np.asarray(correct, np.float64)
  total = np.asarray(total, np.float64)
  present = total > 0
  acc = np.where(present, correct / np.maximum(total, 1), np.nan)
  groups = []
  for g in range(len(total)):
    groups.append({
        "y": int(g // num_places), "place": int(g % num_places), "n": int(total[g]),
        "accuracy": None if not present[g] else float(acc[g]),
    })
  out = {
      "worst_group_accuracy": float(np.nanmin(acc)) if present.any() else None,
      "average_accuracy": float(correct.sum() / total.sum()) if total.sum() else None,
      "mean_group_accuracy": float(np.nanmean(acc)) if present.any() else None,
      "average_accuracy_train_weighted": None,
      "groups": groups,
  }
  if present.any():
    worst = int(np.nanargmin(acc))
    out["worst_group"] = {"y": worst // num_places, "place": worst % num_places}
  # Class accuracies (need no attribute labels): used for selection without group labels.
  num_classes = len(total) // num_places
  cc = correct.reshape(num_classes, num_places).sum(1)
  ct = total.reshape(num_classes, num_places).sum(1)
  class_acc = [float(c / t) if t else None for c, t in zip(cc, ct)]
  out["class_accuracy"] = class_acc
  valid = [a for a in class_acc if a is not None]
  out["worst_class_accuracy"] = min(valid) if valid else None
  if train_total is not None:
    w = np.asarray(train_total, np.float64) * present
    if w.sum() > 0:
      out["average_accuracy_train_weighted"] = float(np.nansum(np.where(present, acc, 0.0) * w) / w.sum())
  return out


def format_split(name: str, m: dict) -> str:
  """One labelled line: WGA, train-weighted average, plain average."""

  def pct(v):
    return "  n/a" if v is None else f"{100 * v:5.1f}"

  return (f"{name}: worst-group acc {pct(m['worst_group_accuracy'])} | avg acc (train-weighted) "
          f"{pct(m['average_accuracy_train_weighted'])} | avg acc (plain) {pct(m['average_accuracy'])}")


def markdown_table(m: dict, class_names=None, place_names=None) -> str:
  """Per-group table in markdown."""
  lines = ["| class (y) | attribute (place) | n | accuracy |", "|---|---|---|---|"]
  for g in m["groups"]:
    yn = f"{g['y']}" + (f" {class_names[g['y']]}" if class_names else "")
    pn = f"{g['place']}" + (f" {place_names[g['place']]}" if place_names else "")
    a = "n/a" if g["accuracy"] is None else f"{100 * g['accuracy']:.1f}"
    lines.append(f"| {yn} | {pn} | {g['n']} | {a} |")
  return "\n".join(lines)
