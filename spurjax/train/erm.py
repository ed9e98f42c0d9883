"""ERM: plain cross-entropy on the training split, through the one trainer."""
from __future__ import annotations

import json
import os

from spurjax import distributed
from spurjax import report as R
from spurjax.data import load_table
from spurjax.metrics import format_split
from spurjax.train.loop import fit


def is_done(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, "report.json"))


def run(cfg, workdir: str, table=None, hooks=()) -> dict:
  """Trains ERM in `workdir` (resuming if a checkpoint is there); writes report.json / report.md."""
  table = table if table is not None else load_table(cfg.data)  # validated before anything is written
  if distributed.from_main(is_done(workdir)):  # every process takes the same branch
    with open(os.path.join(workdir, "report.json")) as f:
      rep = json.load(f)
  else:
    rep = fit(cfg, table, workdir, hooks=hooks, name="erm")
    if distributed.is_main():
      R.write(workdir, f"ERM on {table.name}", rep, table.class_names, table.place_names)
  for s in ("val", "test"):
    if s in rep:
      print(format_split(s, rep[s]))
  return rep
