"""`spurjax bench methods`: every method x seed in one harness, summarised as mean +- std over seeds.

  spurjax bench methods --config configs/synth.py --seeds 3 --methods erm,suby,subg,groupdro,jtt,dfr
      [--workdir runs/methods] [--config.key=value ...]

The overrides hold for every row, the dataset included (`--config.data.kind=folder --config.data.root=DIR`
runs every method on DIR); they win over a method's published settings (`spurjax.baselines.hparams`).
Runs land in `W/<method>/seed<k>` (finished runs are skipped); DFR and the DDB rows use
`W/erm/seed<k>` (selected by validation average accuracy, without group labels).
Writes `W/methods.md`, `W/methods.csv` and `W/methods.png` (test accuracies in %).
"""
from __future__ import annotations

import csv
import os
import time

import numpy as np

from spurjax.errors import SpurjaxError

DEFAULT_METHODS = "erm,suby,subg,groupdro,jtt,dfr,ddb"
# DDB rows: the pipeline with these settings on top of the config (each its own `spurjax run`).
DDB_VARIANTS = {
    "ddb": {},                                                          # the diffusion generator
    "ddb_paste_true": {"ddb.inpaint.generator": "paste", "ddb.segment.method": "given",   # ceiling: a perfect object swap
                       "ddb.segment.compare": ()},
    "ddb_paste": {"ddb.inpaint.generator": "paste"},                            # DaC-style, with predicted masks
    "ddb_redraw": {"ddb.inpaint.generator": "redraw"},                          # ceiling: perfect edits (built-in benchmark)
    # No group label anywhere: the shared ERM run selects by validation average accuracy (as the ERM
    # row does) and retraining by worst-class validation accuracy.
    "ddb_nolabels": {"ddb.retrain.select": "val_worst_class"},
}
# Variants that differ from another only in later stages share that run's earlier stage folders.
SHARED_STAGES = ("select", "segment", "invert", "inpaint", "prune")
SHARES_STAGES_WITH = {"ddb_nolabels": ("ddb", SHARED_STAGES),      # only retraining differs
                      "ddb_redraw": ("ddb", ("select", "segment"))}   # the generator and what follows
METRICS = (("worst_group_accuracy", "worst-group acc"),
           ("average_accuracy_train_weighted", "avg acc (train-weighted)"),
           ("average_accuracy", "avg acc (plain)"))


def parse_methods(text: str) -> list[str]:
  from spurjax.baselines.runner import METHODS
  methods = [m.strip() for m in text.split(",") if m.strip()]
  if not methods:
    raise SpurjaxError("--methods: no method given")
  for m in methods:
    if m not in DDB_VARIANTS and m not in METHODS:
      raise SpurjaxError(f"--methods: unknown method '{m}' (known: {', '.join(METHODS + tuple(DDB_VARIANTS))})")
  if len(set(methods)) != len(methods):
    raise SpurjaxError(f"--methods: a method is listed twice in '{text}'")
  return methods


def ddb_group_labels(cfg) -> dict:
  """DDB never reads training group labels; validation ones only where ERM or retraining selects by WGA."""
  val = "val_wga" in (cfg.train.get("select", "val_wga"), cfg.ddb.retrain.get("select", "val_wga"))
  return {"train": "no", "val": "yes" if val else "no"}


def summarise(reports: dict) -> list[dict]:
  """Per method: group labels, seeds and mean / std (%) of each test metric over seeds.

  Args:
    reports: {method: [report dict per seed]} (reports carry `group_labels` and `test`).
  """
  rows = []
  for method, reps in reports.items():
    row = {"method": method, "seeds": len(reps)}
    gl = reps[0].get("group_labels", {}) if reps else {}
    row["train_group_labels"] = gl.get("train", "?")
    row["val_group_labels"] = gl.get("val", "?")
    for key, _ in METRICS:
      vals = np.array([100.0 * r["test"][key] for r in reps if r.get("test", {}).get(key) is not None])
      row[f"{key}_mean"] = float(vals.mean()) if len(vals) else float("nan")
      row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    rows.append(row)
  return rows


def markdown(rows: list[dict], title: str) -> str:
  lines = [f"# {title}", "", "Test accuracy (%), mean ± std over seeds (sample std; 0 with one seed).", "",
           "| method | group labels (train/val) | seeds | " + " | ".join(n for _, n in METRICS) + " |",
           "|---|---|---|" + "---|" * len(METRICS)]
  for r in rows:
    cells = [f"{r[f'{k}_mean']:.1f} ± {r[f'{k}_std']:.1f}" for k, _ in METRICS]
    lines.append(f"| {r['method']} | {r['train_group_labels']}/{r['val_group_labels']} | {r['seeds']} | "
                 + " | ".join(cells) + " |")
  lines += ["", "*train-weighted* weights each group's accuracy by its share of the training set; *plain* is "
            "the accuracy over all test examples. DFR fits its last layer on the validation set, so its "
            "validation numbers (in its report.json) are optimistic; the test numbers here are not."]
  return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str) -> None:
  keys = ["method", "train_group_labels", "val_group_labels", "seeds"]
  keys += [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")]
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys})
  os.replace(path + ".tmp", path)


def plot(rows: list[dict], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  x = np.arange(len(rows))
  width = 0.8 / len(METRICS)
  fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.2))
  for i, (key, name) in enumerate(METRICS):
    ax.bar(x + (i - (len(METRICS) - 1) / 2) * width, [r[f"{key}_mean"] for r in rows], width,
           yerr=[r[f"{key}_std"] for r in rows], capsize=3, label=name)
  ax.set_xticks(x, [f"{r['method']}\n({r['train_group_labels']}/{r['val_group_labels']})" for r in rows])
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title)
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(METRICS), fontsize=8, frameon=False)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def write_outputs(rows: list[dict], workdir: str, title: str) -> str:
  md = markdown(rows, title)
  with open(os.path.join(workdir, "methods.md.tmp"), "w") as f:
    f.write(md)
  os.replace(os.path.join(workdir, "methods.md.tmp"), os.path.join(workdir, "methods.md"))
  write_csv(rows, os.path.join(workdir, "methods.csv"))
  plot(rows, os.path.join(workdir, "methods.png"), title)
  return md


def run(base_cfg, methods, seeds: int, workdir: str, overrides=(), table=None) -> list[dict]:
  """Runs (or resumes) every method for seeds 0..seeds-1; writes and returns the summary rows.

  `overrides` (`--config.key=value`) are applied to a copy of `base_cfg` before anything reads it (the
  dataset table, the dataset's published settings), then again on top of each method's published
  settings, so that they win over those; a DDB row's own settings (`DDB_VARIANTS`) come last.
  """
  from spurjax.baselines import hparams, runner
  from spurjax.config_util import apply_overrides
  from spurjax.data import load_table
  if seeds < 1:
    raise SpurjaxError(f"--seeds must be >= 1, got {seeds}")
  overrides = list(overrides)
  base_cfg = apply_overrides(base_cfg.copy_and_resolve_references(), overrides)
  table = table if table is not None else load_table(base_cfg.data)
  os.makedirs(workdir, exist_ok=True)
  reports = {m: [] for m in methods}
  for k in range(seeds):
    for m in methods:
      t0 = time.time()
      run_dir = os.path.join(workdir, m, f"seed{k}")
      erm_dir = os.path.join(workdir, "erm", f"seed{k}")
      erm_cfg = _seeded(hparams.method_config(base_cfg, "erm", overrides), k)
      if m in DDB_VARIANTS:  # its ERM stage is the ERM row's run (same settings, so the same fingerprint)
        from spurjax.ddb.run import run as run_ddb
        cfg = _with(erm_cfg, DDB_VARIANTS[m])
        other, stages = SHARES_STAGES_WITH.get(m, (None, ()))
        shared = {s: os.path.join(workdir, other, f"seed{k}", s) for s in stages} if other else None
        full = run_ddb(cfg, run_dir, erm_dir=erm_dir, table=table, stage_dirs=shared)
        rep = {**full["ddb"], "method": m, "group_labels": ddb_group_labels(cfg)}
      else:
        cfg = _seeded(hparams.method_config(base_cfg, m, overrides), k)
        rep = runner.run_method(cfg, m, run_dir, erm_workdir=erm_dir, table=table, erm_cfg=erm_cfg)
      print(f"[bench methods] {m} seed {k}: {time.time() - t0:.0f} s", flush=True)
      reports[m].append(rep)
  rows = summarise(reports)
  print(write_outputs(rows, workdir, f"Methods on {table.name}"))
  return rows


def _with(cfg, settings: dict):
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    for key, value in settings.items():
      node = c
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value
  return c


def _seeded(cfg, seed: int):
  with cfg.unlocked():
    cfg.seed = int(seed)
  return cfg


def _arguments(p) -> None:
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--methods", default=DEFAULT_METHODS)


def main(argv) -> int:
  from spurjax.config_util import config_from, parse_command
  args, overrides = parse_command(argv, "spurjax bench methods", workdir="runs/methods", add_arguments=_arguments)
  methods = parse_methods(args.methods)
  base = config_from(args.config, overrides)   # the dataset, too, is the one the overrides name
  t0 = time.time()
  run(base, methods, args.seeds, args.workdir, overrides)
  print(f"[bench methods] total {time.time() - t0:.0f} s")
  return 0
