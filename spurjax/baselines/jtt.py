"""JTT, Just Train Twice (Liu et al., 2021).

Stage 1: ERM for `method.jtt_epochs` epochs (last epoch kept) in `workdir/identify`.
Error set: training points the stage-1 model misclassifies (eval mode, no augmentation).
Stage 2: a fresh model trained on the training split with every error-set point repeated
`method.jtt_lambda` times in total. Model selection follows `train.select`.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from spurjax import sharding as shd
from spurjax.data.table import TRAIN, Table
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic
from spurjax.train import loop


def error_set(logits: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """The entries of `indices` whose argmax prediction differs from the label."""
  logits, labels, indices = np.asarray(logits), np.asarray(labels), np.asarray(indices)
  return indices[logits.argmax(-1) != labels]


def upsampled_train_set(table: Table, errors: np.ndarray, lam: float) -> loop.TrainSet:
  """Training split plus `lam - 1` extra copies of every error-set index (each appears `lam` times)."""
  reps = int(round(float(lam)))
  if reps < 1:
    raise SpurjaxError(f"config method.jtt_lambda={lam}: must be >= 1")
  idx = table.indices(TRAIN)
  extra = np.repeat(np.asarray(errors, idx.dtype), reps - 1)
  return loop.TrainSet.from_table(table, np.concatenate([idx, extra]))


def stage1_config(cfg):
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    c.train.num_epochs = int(cfg.method.jtt_epochs)
    c.train.select = "last"
    c.method.loss = "ce"
  return c


def identify(cfg, table: Table, workdir: str, sources=None, mesh=None) -> np.ndarray:
  """Trains (or resumes) the identification model and returns the error set (table indices)."""
  path = os.path.join(workdir, "jtt_error_set.json")
  if os.path.isfile(path):
    with open(path) as f:
      return np.asarray(json.load(f)["indices"], np.int64)
  c1 = stage1_config(cfg)
  id_dir = os.path.join(workdir, "identify")
  loop.fit(c1, table, id_dir, sources=sources, mesh=mesh, name="jtt-identify")
  model, _ = loop.init_variables(c1, table, jax.random.PRNGKey(0))
  variables = loop.load_best_variables(c1, table, id_dir)
  sources = sources or loop.make_sources(c1, table)
  mesh = mesh or shd.make_mesh()
  idx = table.indices(TRAIN)
  logits = loop.predict(c1, model, variables, sources["eval"], table, idx, mesh)
  errors = error_set(logits, table.y[idx], idx)
  if jax.process_index() == 0:
    write_json_atomic(path, {"indices": [int(i) for i in errors], "num_train": int(len(idx)),
                             "group_counts": np.bincount(table.group[errors],
                                                         minlength=table.num_groups).tolist()})
  return errors


def run(cfg, table: Table, workdir: str) -> dict:
  """Both stages; returns the stage-2 report (plus a `jtt` summary of the error set)."""
  sources = loop.make_sources(cfg, table)
  errors = identify(cfg, table, workdir, sources=sources)
  if len(errors) == 0:
    print("[jtt] the identification model makes no training errors: stage 2 is plain ERM", flush=True)
  ts = upsampled_train_set(table, errors, cfg.method.jtt_lambda)
  c2 = cfg.copy_and_resolve_references()
  with c2.unlocked():
    c2.method.loss = "ce"
  rep = loop.fit(c2, table, workdir, train_set=ts, sources=sources, name="jtt")
  rep["jtt"] = {"error_set_size": int(len(errors)), "lambda": float(cfg.method.jtt_lambda),
                "error_set_group_counts": np.bincount(table.group[errors], minlength=table.num_groups).tolist()}
  return rep
