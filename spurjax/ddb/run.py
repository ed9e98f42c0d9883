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
from spurjax.context import Context
from spurjax.data import load_table
from spurjax.ddb import inpaint, invert, prune_stage, retrain, segment, select
from spurjax.ddb import report as ddb_report
from spurjax.errors import SpurjaxError
from spurjax.stages import Runner
from spurjax.train import erm
from spurjax.train.loop import write_json_atomic


def run(cfg, workdir: str, table=None, hooks=(), erm_dir: str | None = None,
        stage_dirs: dict | None = None) -> dict:
  """Runs (or resumes) every stage; returns the report dict written to `W/report.json`.

  `erm_dir`: the ERM stage's folder when it is shared with other runs (default `W/erm`).
  `stage_dirs`: {stage name: folder} for other stages shared with another run (a folder whose
  fingerprint differs is redone in place, so share only stages whose settings agree).
  """
  table = table if table is not None else load_table(cfg.data)   # validated before anything is written
  if table.num_classes < 2:
    raise SpurjaxError(f"{table.name}: DDB needs at least 2 classes")
  ctx = Context(cfg=cfg, workdir=workdir, table=table, mesh=shd.make_mesh(), hooks=tuple(hooks),
                dirs={**({"erm": erm_dir} if erm_dir else {}), **(stage_dirs or {})})
  ctx.diffusion_dir, ctx.inpaint_dir                                                # a bad diffusion.path fails before any work
  if ctx.separate_inpainter and str(cfg.ddb.generator) not in inpaint.MODEL_FREE:   # so do mismatched text encoders
    from spurjax.diffusion.invert import check_transferable
    check_transferable(ctx.diffusion_dir, ctx.inpaint_dir, where=(f"diffusion.path {ctx.diffusion_dir}",
                                                                  f"diffusion.inpaint_path {ctx.inpaint_dir}"))
  segment.check_config(ctx)                                                         # and a bad refinement band
  invert.check_config(ctx)                                                          # or ddb.invert_mask
  inpaint.check_config(ctx)                                                         # or ddb.template / attributes
  prune_stage.check_config(ctx)                                                     # or ddb.prune_score / prune_top
  retrain.check_config(ctx)                                                         # or ddb.retrain.interpolate
  os.makedirs(workdir, exist_ok=True)
  runner = Runner(ctx)

  erm_res = runner.run(erm.STAGE)              # 1. ERM
  runner.run(select.STAGE)                     # 2. majority images by per-sample ERM loss (no group labels)
  masks = runner.run(segment.STAGE)            # 3. object masks
  runner.run(invert.STAGE)                     # 4. one textual-inversion token per class (on the masks, if so set)
  edits = runner.run(inpaint.STAGE)            # 5. the other classes' tokens inpainted into each mask
  kept = runner.run(prune_stage.STAGE)         # 6. IG attribution + two-criterion pruning
  ddb_rep = runner.run(retrain.STAGE)          # 7. retraining from the ERM weights on train + kept edits
  runner.report()

  rep = ddb_report.build(ctx, erm_res.report, ddb_rep, masks, edits, kept)
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
