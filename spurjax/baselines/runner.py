"""`run_method`: every baseline in one harness, each run resumable in its own workdir.

All neural-network training goes through `spurjax.train.loop.fit`; a method only builds its
`TrainSet`, picks its loss or runs `fit` in stages (JTT), or fits a linear head (DFR).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from spurjax import report as R
from spurjax.baselines.hparams import method_config
from spurjax.data import load_table
from spurjax.data.table import TRAIN
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic
from spurjax.metrics import format_split
from spurjax.train import erm, loop

# Which group labels a method uses: (training split, validation split). Validation "yes"
# when model selection (or DFR's head) uses them.
GROUP_LABELS = {
    "erm": ("no", "no"),
    "suby": ("no", "no"),
    "rwy": ("no", "no"),
    "subg": ("yes", "no"),
    "rwg": ("yes", "no"),
    "groupdro": ("yes", "yes"),
    "jtt": ("no", "yes"),
    "dfr": ("no", "yes"),
}
METHODS = tuple(GROUP_LABELS)
TITLES = {"erm": "ERM", "suby": "SUBY", "rwy": "RWY", "subg": "SUBG", "rwg": "RWG", "groupdro": "GroupDRO",
          "jtt": "JTT", "dfr": "DFR", "ddb": "DDB"}


def check_method(method: str) -> str:
  if method not in GROUP_LABELS:
    raise SpurjaxError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
  return method


def group_labels_used(method: str, cfg) -> tuple[str, str]:
  """The declared use, with validation 'yes' whenever the run selects by validation WGA."""
  train, val = GROUP_LABELS.get(method, ("no", "yes"))
  if cfg.train.select == "val_wga":
    val = "yes"
  return train, val


def read_report(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, "report.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _with_method_cfg(cfg, method: str, **method_keys):
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    c.method.name = method
    for k, v in method_keys.items():
      c.method[k] = v
  return c


def erm_config(cfg):
  """The ERM config a DFR run falls back on: `cfg` with ERM's method settings (loss, selection)."""
  return method_config(cfg, "erm")


def _finish(cfg, method: str, workdir: str, rep: dict, table) -> dict:
  train, val = group_labels_used(method, cfg)
  rep = {**rep, "method": method, "group_labels": {"train": train, "val": val}, "seed": int(cfg.seed)}
  write_json_atomic(os.path.join(workdir, "report.json"), rep)
  R.write(workdir, f"{TITLES.get(method, method)} on {table.name}", rep, table.class_names, table.place_names)
  return rep


def run_method(cfg, method: str, workdir: str, erm_workdir: Optional[str] = None, *, table=None,
               erm_cfg=None) -> dict:
  """Runs `method` with `cfg` (published settings already applied, see `hparams.method_config`).

  Writes `workdir/report.json` (+ report.md) in the schema of `spurjax.report`, with
  `method` and `group_labels` added; a workdir holding a report.json with `method` is
  returned as is (ERM runs are the ERM stage: reused only when their fingerprint matches). DFR
  uses the ERM stage in `erm_workdir` (default `workdir/erm`) with `erm_cfg` (default `erm_config(cfg)`).
  """
  check_method(method)
  done = read_report(workdir)
  if method != "erm" and done is not None and done.get("method") == method:  # ERM: its stage fingerprint decides
    _print(method, done)
    return done
  table = table if table is not None else load_table(cfg.data)
  os.makedirs(workdir, exist_ok=True)
  cfg = _with_method_cfg(cfg, method)
  if method == "erm":
    rep = erm.run(cfg, workdir, table=table)
  elif method in ("suby", "rwy", "subg", "rwg"):
    from spurjax.baselines.sampling import balanced_train_set
    rep = loop.fit(cfg, table, workdir, train_set=balanced_train_set(table, method, int(cfg.seed)), name=method)
  elif method == "groupdro":
    loss = cfg.method.loss
    cfg = _with_method_cfg(cfg, method, loss="group_dro" if loss == "ce" else loss,
                           group_counts=tuple(int(c) for c in table.group_counts(TRAIN)))
    ts = None
    if cfg.method.dro_balanced:
      from spurjax.baselines.sampling import group_upsampled_train_set
      ts = group_upsampled_train_set(table, int(cfg.seed))
    rep = loop.fit(cfg, table, workdir, train_set=ts, name=method)
  elif method == "jtt":
    from spurjax.baselines import jtt
    rep = jtt.run(cfg, table, workdir)
  else:  # dfr
    from spurjax.baselines import dfr
    erm_workdir = erm_workdir or os.path.join(workdir, "erm")
    erm_cfg = erm_cfg if erm_cfg is not None else erm_config(cfg)
    erm.run(erm_cfg, erm_workdir, table=table)   # reused when its fingerprint matches
    rep = dfr.run(cfg, table, workdir, erm_workdir)
    rep["selection"] = f"{rep['selection']} (ERM model selected by {read_report(erm_workdir).get('selection')})"
  rep = _finish(cfg, method, workdir, rep, table)
  _print(method, rep)
  return rep


def _print(method: str, rep: dict) -> None:
  for s in ("val", "test"):
    if s in rep:
      note = " (optimistic: trained on val)" if rep[s].get("optimistic") else ""
      print(f"[{method}] {format_split(s, rep[s])}{note}", flush=True)
