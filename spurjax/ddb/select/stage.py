"""Stage select: the K majority images of each class (`ddb.select.k`), found without group labels.

Artefact `Selection`, on disk `select/selected.json` =
  {"k": K, "selected": {"<class>": [table indices]}, "psi_ref": {"<class>": Psi_i},
   "loss": {"<class>": [per-sample loss of each selected index]}}
where Psi_i is the mean ERM probability of class i over its selected images (the
reference level of the pruning stage's probability criterion).
"""
from __future__ import annotations

import json
import os

import jax

from spurjax.data.table import TRAIN
from spurjax.ddb.select.core import Selection, check_k, selection_from_logits
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage

FILE = "selected.json"


def load(ctx, folder: str) -> Selection:
  path = os.path.join(folder, FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return Selection.from_json(json.load(f))
  except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise SpurjaxError(f"{path}: unreadable selection ({type(e).__name__}: {e}); delete it to recompute") from None


def compute(ctx, inputs, folder: str) -> Selection:
  """Per-sample ERM losses of the training split -> the K lowest per class; writes `selected.json`."""
  from spurjax.train import loop

  erm = inputs["erm"]
  table = ctx.table
  idx = table.indices(TRAIN)
  if len(idx) == 0:
    raise SpurjaxError(f"dataset {table.name}: no training examples (split 0)")
  logits = loop.predict(ctx.cfg, erm.model, erm.variables, ctx.sources["eval"], table, idx, ctx.mesh,
                        desc="select: ERM")
  result = selection_from_logits(logits, table.y[idx], idx, int(ctx.cfg.ddb.select.k), table.num_classes)
  if jax.process_index() == 0:
    with open(os.path.join(folder, FILE), "w", encoding="utf-8") as f:
      json.dump(result.to_json(), f, indent=1)
  return result


def validate(ctx) -> None:
  """Before any stage runs: `ddb.select.k` is a positive integer."""
  check_k(ctx.cfg.ddb.select.k)


STAGE = Stage(name="select", groups=("ddb.select",), upstream=("erm",), compute=compute, load=load, validate=validate)
