"""`spurjax run`: the DDB pipeline, top to bottom. Every stage resumes from its own folder.

  W/erm/       ERM (the one trainer)              W/select/    lowest-loss majority images
  W/invert/    one token per class                W/segment/   object masks (+ IoU)
  W/inpaint/   counterfactual edits               W/prune/     prune_log.csv + kept edits dataset
  W/retrain/   ERM weights fine-tuned on train + kept edits
  W/report.json, W/report.md, W/plots/
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from spurjax import models
from spurjax import sharding as shd
from spurjax.data import load_table
from spurjax.ddb import invert, retrain, segment, select
from spurjax.ddb.context import Context
from spurjax.ddb.inpaint import nouns_for, run_inpaint
from spurjax.ddb.prune_stage import run_prune
from spurjax.ddb import report as ddb_report
from spurjax.errors import SpurjaxError
from spurjax.train import erm
from spurjax.train.loop import dtype_of, load_best_variables, write_json_atomic


def run(cfg, workdir: str, table=None, hooks=(), erm_workdir: str | None = None) -> dict:
  """Runs (or resumes) every stage; returns the report dict written to `W/report.json`."""
  table = table if table is not None else load_table(cfg.data)   # validated before anything is written
  if table.num_classes < 2:
    raise SpurjaxError(f"{table.name}: DDB needs at least 2 classes")
  from spurjax.diffusion.prior import resolve_diffusion_path
  resolve_diffusion_path(str(cfg.diffusion.path))                  # a bad path fails before any work
  os.makedirs(workdir, exist_ok=True)
  mesh = shd.make_mesh()

  # 1. ERM.
  erm_dir = erm_workdir or os.path.join(workdir, "erm")
  erm_rep = erm.run(cfg, erm_dir, table=table, hooks=hooks)
  model = models.get_model(cfg.model.name, table.num_classes, dtype_of(cfg))
  erm_vars = load_best_variables(cfg, table, erm_dir)
  ctx = Context(cfg=cfg, workdir=workdir, table=table, mesh=mesh, erm_variables=erm_vars, model=model)

  # 2. Majority selection by per-sample ERM loss (no group labels).
  selected = select.run_select(ctx)
  nouns = nouns_for(cfg, table)

  # 3. One textual-inversion token per class.
  tokens = invert.run_invert(ctx, selected, nouns)

  # 4. Object masks.
  masks = segment.run_segment(ctx, selected)

  # 5. Counterfactuals: the other classes' tokens inpainted into each selected image.
  edits = run_inpaint(ctx, selected, masks, tokens)

  # 6. Attribution + two-criterion pruning.
  kept = run_prune(ctx, selected, masks, edits)

  # 7. Retraining from the ERM weights on train + kept edits.
  ddb_rep = retrain.retrain(cfg, table, kept, erm_vars, os.path.join(workdir, "retrain"), hooks=hooks)

  rep = ddb_report.build(ctx, erm_rep, ddb_rep, edits, kept)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "report.json"), rep)
    ddb_report.write_markdown(workdir, rep, table)
    ddb_report.plots(workdir, rep, table)
  ddb_report.print_summary(rep)
  return rep


def main(argv=None) -> int:
  from spurjax.cli import _config_command
  cfg, workdir = _config_command(list(argv or []), "spurjax run")
  run(cfg, workdir)
  return 0
