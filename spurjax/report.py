"""report.json / report.md: the stable, documented result schema.

report.json per split (`val`, `test`):
  worst_group_accuracy, average_accuracy_train_weighted, average_accuracy,
  groups: [{y, place, n, accuracy}]
plus extras (mean_group_accuracy, worst_group, class_accuracy, worst_class_accuracy) and,
at the top level, `selection` (criterion), `selected_epoch`, `history`, `train_group_counts`.
Fractions are in [0, 1].
"""
from __future__ import annotations

import os

from spurjax import metrics as M

SCHEMA_KEYS = ("worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy", "groups")


def split_summary(report: dict) -> dict:
  """Only the schema keys of each split."""
  return {s: {k: report[s][k] for k in SCHEMA_KEYS} for s in ("val", "test") if s in report}


def markdown(title: str, report: dict, class_names=None, place_names=None) -> str:
  lines = [f"# {title}", ""]
  alpha = report.get("selected_alpha")
  tie = f" (ties: {report['tie_break']})" if report.get("tie_break") else ""
  lines.append(f"Model selected by `{report.get('selection')}`{tie} at epoch {report.get('selected_epoch')}"
               + ("." if alpha is None else f", interpolated with its starting weights at alpha {alpha:g}."))
  lines.append("")
  lines.append("| split | worst-group acc | avg acc (train-weighted) | avg acc (plain) |")
  lines.append("|---|---|---|---|")
  for s in ("val", "test"):
    if s in report:
      m = report[s]
      f = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
      lines.append(f"| {s} | {f(m['worst_group_accuracy'])} | {f(m['average_accuracy_train_weighted'])} | "
                   f"{f(m['average_accuracy'])} |")
  for s in ("val", "test"):
    if s in report:
      lines += ["", f"## {s}: per group", "", M.markdown_table(report[s], class_names, place_names)]
  lines.append("")
  lines.append("Averages: *train-weighted* weights each group's accuracy by its share of the training set "
               "(the Waterbirds/CelebA literature's \"average accuracy\"); *plain* is the accuracy over all examples.")
  return "\n".join(lines) + "\n"


def write(workdir: str, title: str, report: dict, class_names=None, place_names=None) -> None:
  md = markdown(title, report, class_names, place_names)
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write(md)
  os.replace(tmp, os.path.join(workdir, "report.md"))
