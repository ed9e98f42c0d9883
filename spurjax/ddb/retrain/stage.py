"""Stage retrain: the whole network, from the ERM weights, on train + kept counterfactuals.

Loss (the paper's): L = L_train + sum_j gamma_j * L_gen,j. The reference code draws a train batch
and a generated batch each step; here one mixed stream does the same job: every kept edit is
repeated so that generated examples make up about `ddb.retrain.gen_fraction` of each epoch, and an edit
of target class j carries loss weight gamma_j (train examples weight 1). Model selection by
validation worst-group accuracy (`val_wga`, uses validation group labels) or, needing no group
labels at all, worst-class validation accuracy (`val_worst_class`). With `ddb.retrain.interpolate`
the kept model is the best (by the same criterion) of (1 - alpha) * ERM + alpha * retrained over
the listed alphas and every epoch (WiSE-FT's weight-space ensemble).

With `ddb.retrain.background_weight > 0` every selected image also enters with its object erased
(`spurjax.ddb.retrain.erase`), once under each class label at that weight and repeated as often as the
edits: the scene alone should predict no class.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from spurjax.data.table import GENERATED, TRAIN, Table, concat
from spurjax.ddb.retrain import erase
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic
from spurjax.stages import Stage
from spurjax.train import erm
from spurjax.train.loop import TrainSet, fit, interpolation_alphas


def retrain_set(table: Table, gen_start: int, gammas, gen_fraction: float, background_start: int | None = None,
                background_weight: float = 0.0) -> TrainSet:
  """Train rows (weight 1) plus generated rows [gen_start:background_start) (the edits) repeated so
  they make up about `gen_fraction` of the train + edit rows, weighted by gamma of their label; rows
  [background_start:] (erased backgrounds) are repeated as often as the edits (with no kept edits, as often
  as edits of their number would be), at `background_weight`."""
  train_idx = table.indices(TRAIN)
  gen_idx = np.nonzero(table.split == GENERATED)[0]
  gen_idx = gen_idx[gen_idx >= gen_start]
  bg_idx = gen_idx[gen_idx >= background_start] if background_start is not None else gen_idx[:0]
  gen_idx = gen_idx[:len(gen_idx) - len(bg_idx)]
  anchor = len(gen_idx) or len(bg_idx)      # no kept edits: the backgrounds take their share
  if anchor == 0:
    return TrainSet.from_table(table, train_idx)
  gammas = np.asarray(gammas, np.float32).reshape(-1)
  if len(gammas) == 0:
    raise SpurjaxError("config ddb.retrain.gammas: no values")
  if len(gammas) < table.num_classes:  # K classes: the last value serves the remaining classes
    gammas = np.concatenate([gammas, np.full(table.num_classes - len(gammas), gammas[-1], np.float32)])
  f = float(gen_fraction)
  target = f / max(1e-6, 1 - f) * len(train_idx)
  repeat = max(1, int(round(target / anchor)))
  idx = np.concatenate([train_idx, np.tile(gen_idx, repeat), np.tile(bg_idx, repeat)])
  w = np.concatenate([np.ones(len(train_idx), np.float32), np.tile(gammas[table.y[gen_idx]], repeat),
                      np.full(len(bg_idx) * repeat, float(background_weight), np.float32)])
  return TrainSet.from_table(table, idx, w)


def retrain(cfg, table: Table, kept: Table, erm_variables, workdir: str, hooks=(), mesh=None,
            backgrounds: Table | None = None) -> dict:
  """Core: fits on table's train split + `kept` (as generated rows) + optional erased `backgrounds` from
  the ERM weights; returns the report."""
  both = concat(table, kept, second_split=GENERATED)
  bg_start, bg_weight = None, 0.0
  if backgrounds is not None and len(backgrounds):
    bg_start, bg_weight = len(both), float(cfg.ddb.retrain.background_weight)
    both = concat(both, backgrounds, second_split=GENERATED)
  ts = retrain_set(both, len(table), cfg.ddb.retrain.gammas, cfg.ddb.retrain.gen_fraction, bg_start, bg_weight)
  rep = fit(retrain_config(cfg), both, workdir, train_set=ts, init_vars=erm_variables, hooks=hooks, mesh=mesh,
            name="retrain")
  used = bg_start is not None and bool(np.any(ts.indices >= bg_start))   # as trained on, not as built
  rep["background_images"] = len(backgrounds) // max(1, table.num_classes) if used else 0
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "report.json"), rep)
    if rep["background_images"]:
      save_background_grid(os.path.join(workdir, "backgrounds.png"), backgrounds, table.num_classes)
  return rep


def save_background_grid(path: str, backgrounds: Table, num_classes: int, n: int = 16) -> None:
  """Up to `n` erased backgrounds, evenly spaced over the selected images (so every class's scenes show)."""
  from spurjax.bench.prior import save_grid
  count = len(backgrounds) // max(1, num_classes)
  picks = np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(int))
  save_grid(path, np.stack([backgrounds.image(int(p) * num_classes) for p in picks]), cols=8)


def retrain_config(cfg):
  """The config of the retraining run: cfg with `ddb.retrain.*` overriding optim / train keys."""
  rcfg = cfg.copy_and_resolve_references()
  r = cfg.ddb.retrain
  with rcfg.unlocked():
    for k in ("name", "lr", "weight_decay", "schedule", "momentum"):
      if k in r:
        rcfg.optim[k] = r[k]
    for k in ("num_epochs", "batch_size", "select", "ema_decay", "interpolate"):
      if k in r:
        rcfg.train[k] = r[k]
  return rcfg


def check_config(ctx) -> None:
  """Before any work: `ddb.retrain.interpolate` is a list of alphas in (0, 1] with a validation criterion,
  and `ddb.retrain.background_weight` / `background_grow` are not negative."""
  rcfg = retrain_config(ctx.cfg)
  interpolation_alphas(rcfg, rcfg.train.select, True, key="ddb.retrain.interpolate")
  d = ctx.cfg.ddb.retrain
  if float(d.background_weight) < 0:
    raise SpurjaxError(f"config ddb.retrain.background_weight = {d.background_weight}: must be >= 0 (0: off)")
  if int(d.background_grow) < 0:
    raise SpurjaxError(f"config ddb.retrain.background_grow = {d.background_grow}: must be >= 0")


def backgrounds(ctx, masks) -> Table | None:
  """The erased selected images (`spurjax.ddb.retrain.erase`) when `ddb.retrain.background_weight > 0`, else None."""
  if float(ctx.cfg.ddb.retrain.background_weight) <= 0:
    return None
  raw = masks.raw
  images = {i: ctx.sources["eval"](i) for i in raw}
  return erase.background_table(ctx.table, images, raw, int(ctx.cfg.ddb.retrain.background_grow))


def compute(ctx, inputs, folder: str) -> None:
  retrain(ctx.cfg, ctx.table, inputs["prune"].table, inputs["erm"].variables, folder, hooks=ctx.hooks, mesh=ctx.mesh,
          backgrounds=backgrounds(ctx, inputs["segment"]))


def load(ctx, folder: str) -> dict:
  with open(os.path.join(folder, "report.json")) as f:
    return json.load(f)


STAGE = Stage(name="retrain", groups=(*erm.GROUPS, "ddb.retrain"), shared=erm.shared_keys,
              upstream=("erm", "segment", "prune"), compute=compute, load=load, validate=check_config)
