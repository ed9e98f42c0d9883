"""`spurjax run`: the DDB pipeline, top to bottom, one fingerprinted stage folder each.

  W/erm/       ERM (the one trainer)              W/select/    lowest-loss majority images
  W/segment/   object masks (+ IoU)               W/invert/    one token per class
  W/inpaint/   counterfactual edits               W/prune/     prune_log.csv + kept edits dataset
  W/retrain/   ERM weights fine-tuned on train + kept edits
  W/report.json, W/report.md, W/plots/

A rerun reuses a stage whose fingerprint (its config keys, its upstream stages, its input data)
is unchanged and redoes it and everything downstream otherwise (`spurjax.stages`).
"""
from __future__ import annotations

import os

import jax

from spurjax import sharding as shd
from spurjax.config_util import check_workdir
from spurjax.context import Context
from spurjax.data import load_table
from spurjax.ddb import inpaint, invert, prune, retrain, segment, select
from spurjax.ddb import report as ddb_report
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic
from spurjax.stages import Runner
from spurjax.train import erm

STAGES = (
    erm.STAGE,           # 1. ERM
    select.STAGE,        # 2. majority images by per-sample ERM loss (no group labels)
    segment.STAGE,       # 3. object masks
    invert.STAGE,        # 4. one textual-inversion token per class (on the masks, if so set)
    inpaint.STAGE,       # 5. the other classes' tokens inpainted into each mask
    prune.STAGE,         # 6. IG attribution + two-criterion pruning
    retrain.STAGE,       # 7. retraining from the ERM weights on train + kept edits
)


def validate(ctx, stages=STAGES) -> None:
  """Every stage's settings, model directories and nouns, checked before the first stage computes."""
  if ctx.table.num_classes < 2:
    raise SpurjaxError(f"{ctx.table.name}: DDB needs at least 2 classes")
  _ = ctx.diffusion_dtype   # diffusion.dtype: a bad value is a one-line error here
  for path in [ctx.workdir, *ctx.dirs.values()]:
    check_workdir(path)
  for stage in stages:
    stage.check(ctx)


def run(cfg, workdir: str, table=None, hooks=(), erm_dir: str | None = None,
        stage_dirs: dict | None = None) -> dict:
  """Runs (or resumes) every stage; returns the report dict written to `W/report.json`.

  `erm_dir`: the ERM stage's folder when it is shared with other runs (default `W/erm`).
  `stage_dirs`: {stage name: folder} for other stages shared with another run (a folder whose
  fingerprint differs is redone in place, so share only stages whose settings agree).
  """
  check_workdir(workdir)
  table = table if table is not None else load_table(cfg.data)   # validated before anything is written
  ctx = Context(cfg=cfg, workdir=workdir, table=table, mesh=shd.make_mesh(), hooks=tuple(hooks),
                dirs={**({"erm": erm_dir} if erm_dir else {}), **(stage_dirs or {})})
  validate(ctx)
  os.makedirs(workdir, exist_ok=True)
  runner = Runner(ctx)
  for stage in STAGES:
    runner.run(stage)
  runner.report()

  a = runner.artefacts
  rep = ddb_report.build(ctx, a["erm"].report, a["retrain"], a["segment"], a["inpaint"], a["prune"])
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "report.json"), rep)
    ddb_report.write_markdown(workdir, rep, table)
    ddb_report.plots(workdir, rep, table, ctx.stage_dir("prune"))
  ddb_report.print_summary(rep)
  return rep


def main(argv=None) -> int:
  from spurjax.config_util import config_from, parse_command
  args, overrides = parse_command(argv, "spurjax run")
  run(config_from(args.config, overrides), args.workdir)
  return 0
