"""Stage retrain: the whole network, from the ERM weights, on train + kept counterfactuals.

Loss (the paper's): L = L_train + sum_j gamma_j * L_gen,j. The reference code draws a train batch
and a generated batch each step; here one mixed stream does the same job: every kept edit is
repeated so that generated examples make up about `ddb.gen_fraction` of each epoch, and an edit
of target class j carries loss weight gamma_j (train examples weight 1). Model selection by
validation worst-group accuracy (`val_wga`, uses validation group labels) or, needing no group
labels at all, worst-class validation accuracy (`val_worst_class`). With `ddb.retrain.interpolate`
the kept model is the best (by the same criterion) of (1 - alpha) * ERM + alpha * retrained over
the listed alphas and every epoch (WiSE-FT's weight-space ensemble).
"""
from __future__ import annotations

import json
import os

import numpy as np

from spurjax.data.table import GENERATED, TRAIN, Table, concat
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage
from spurjax.train.erm import config_keys as erm_keys
from spurjax.train.loop import TrainSet, fit, interpolation_alphas


def retrain_set(table: Table, gen_start: int, gammas, gen_fraction: float) -> TrainSet:
  """Train rows (weight 1) plus generated rows [gen_start:] repeated, weighted by gamma of their label."""
  train_idx = table.indices(TRAIN)
  gen_idx = np.nonzero(table.split == GENERATED)[0]
  gen_idx = gen_idx[gen_idx >= gen_start]
  if len(gen_idx) == 0:
    return TrainSet.from_table(table, train_idx)
  gammas = np.asarray(gammas, np.float32).reshape(-1)
  if len(gammas) == 0:
    raise SpurjaxError("config ddb.gammas: no values")
  if len(gammas) < table.num_classes:  # K classes: the last value serves the remaining classes
    gammas = np.concatenate([gammas, np.full(table.num_classes - len(gammas), gammas[-1], np.float32)])
  f = float(gen_fraction)
  target = f / max(1e-6, 1 - f) * len(train_idx)
  repeat = max(1, int(round(target / len(gen_idx))))
  idx = np.concatenate([train_idx, np.tile(gen_idx, repeat)])
  w = np.concatenate([np.ones(len(train_idx), np.float32), np.tile(gammas[table.y[gen_idx]], repeat)])
  return TrainSet.from_table(table, idx, w)


def retrain(cfg, table: Table, kept: Table, erm_variables, workdir: str, hooks=(), mesh=None) -> dict:
  """Core: fits on table's train split + `kept` (as generated rows) from the ERM weights; returns the report."""
  both = concat(table, kept, second_split=GENERATED)
  ts = retrain_set(both, len(table), cfg.ddb.gammas, cfg.ddb.gen_fraction)
  return fit(retrain_config(cfg), both, workdir, train_set=ts, init_vars=erm_variables, hooks=hooks, mesh=mesh,
             name="retrain")


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
  """Before any work: `ddb.retrain.interpolate` is a list of alphas in (0, 1] with a validation criterion."""
  rcfg = retrain_config(ctx.cfg)
  interpolation_alphas(rcfg, rcfg.train.get("select", "val_wga"), True, key="ddb.retrain.interpolate")


def compute(ctx, inputs, folder: str) -> None:
  retrain(ctx.cfg, ctx.table, inputs["prune"].table, inputs["erm"].variables, folder, hooks=ctx.hooks, mesh=ctx.mesh)


def load(ctx, folder: str) -> dict:
  with open(os.path.join(folder, "report.json")) as f:
    return json.load(f)


STAGE = Stage(name="retrain", upstream=("erm", "prune"),
              keys=lambda cfg: erm_keys(cfg) + ["ddb.gammas", "ddb.gen_fraction", "ddb.retrain"],
              compute=compute, load=load)
