"""`spurjax bench ddb --seeds 3`: ERM vs DDB worst-group accuracy over seeds (mean ± std).

Each seed is a full `spurjax run` in `W/seed<k>` (resumable), so the table can be rebuilt
from finished runs at no cost.
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np

from spurjax.bench.common import print_table
from spurjax.config_util import apply_overrides, load_config
from spurjax.errors import SpurjaxError

KEYS = (("worst_group_accuracy", "WGA"), ("average_accuracy_train_weighted", "avg (train-weighted)"),
        ("average_accuracy", "avg (plain)"))


def summarise(reports: list[dict]) -> list[list]:
  rows = []
  for method in ("erm", "ddb"):
    row = [method.upper()]
    for key, _ in KEYS:
      v = np.asarray([100 * r[method]["test"][key] for r in reports], np.float64)
      row.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}")
    rows.append(row)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="spurjax bench ddb")
  p.add_argument("--config", default="configs/synth.py")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--workdir", default="runs/bench-ddb")
  args, rest = p.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    raise SpurjaxError(f"unknown argument(s): {' '.join(bad)}")
  from spurjax.ddb.run import run
  reports = []
  for seed in range(args.seeds):
    cfg = apply_overrides(load_config(args.config), rest + [f"--config.seed={seed}"])
    reports.append(run(cfg, os.path.join(args.workdir, f"seed{seed}")))
  rows = summarise(reports)
  header = ["method"] + [f"test {name} (%)" for _, name in KEYS]
  table = print_table(f"ERM vs DDB over {args.seeds} seeds ({args.config})", header, rows)
  with open(os.path.join(args.workdir, "ddb_bench.md"), "w") as f:
    f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for r in rows:
      f.write("| " + " | ".join(r) + " |\n")
  with open(os.path.join(args.workdir, "ddb_bench.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["seed", "method"] + [k for k, _ in KEYS])
    for seed, rep in enumerate(reports):
      for m in ("erm", "ddb"):
        w.writerow([seed, m] + [rep[m]["test"][k] for k, _ in KEYS])
  return 0
