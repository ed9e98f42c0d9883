"""Backbone pretraining on a broad labelled corpus (`spurjax pretrain`).

  spurjax pretrain --data DIR --out FILE [--config FILE[:arg]] [--workdir W] [--config.key=value ...]

trains `cfg.model.name` on the folder DIR (object family as the label, e.g. the corpus
`spurjax data broad` writes) with the one trainer (`spurjax.train.loop.fit`), using the
config's `pretrain` section (optimiser and schedule) where it has one, and writes the
selected variables to FILE (.npz). A classifier config then starts from them with
`model.init_from=FILE`, or `model.init_from=builtin` for the weights spurjax ships
(spurjax/assets/backbone/<model>.npz). The fc head is re-initialised whenever its class count
differs from the task's, as with torchvision weights. The weights file format and its loading
live in `spurjax.train.backbone`.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from spurjax.data import load_table
from spurjax.errors import SpurjaxError
from spurjax.train import backbone, loop

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "synth.py")


def pretrain_config(cfg, data_dir: str):
  """The config `fit` trains the backbone with: the task config's model and input settings,
  its `pretrain` section's optimiser / schedule, the corpus as data, no init."""
  c = copy.deepcopy(cfg)
  with c.unlocked():
    c.data.kind = "folder"
    c.data.root = os.path.abspath(data_dir)
    c.data.num_classes = 0
    c.data.num_places = 0
    c.model.init_from = ""
    c.model.pretrained = ""
    c.method.name = "erm"
    c.method.loss = "ce"
    p = cfg.pretrain
    for key in ("name", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs"):
      c.optim[key] = p[key]
    for key in ("batch_size", "num_epochs"):
      c.train[key] = p[key]
    c.seed = p.seed
    c.train.select = "val_avg"  # the corpus is balanced over scenes: plain accuracy
  return c


def run(cfg, data_dir: str, out: str, workdir: str | None = None) -> dict:
  """Pretrains and writes `out`; returns the meta dict stored in it."""
  c = pretrain_config(cfg, data_dir)
  table = load_table(c.data)
  own = workdir is None
  workdir = workdir or tempfile.mkdtemp(prefix="spurjax-pretrain-")
  t0 = time.time()
  try:
    rep = loop.fit(c, table, workdir, name="pretrain")
    variables = loop.load_best_variables(c, table, workdir)
  finally:
    if own:
      shutil.rmtree(workdir, ignore_errors=True)
  wall = time.time() - t0
  meta = {"model": c.model.name, "num_classes": int(table.num_classes), "classes": list(table.class_names or []),
          "places": list(table.place_names or []), "data": os.path.basename(os.path.normpath(data_dir)),
          "num_train": int(len(table.indices("train"))), "image_size": int(c.data.image_size),
          "mean": list(c.data.mean), "std": list(c.data.std), "optim": c.optim.to_dict(),
          "batch_size": int(c.train.batch_size), "num_epochs": int(c.train.num_epochs), "seed": int(c.seed),
          "selected_epoch": rep["selected_epoch"], "val_accuracy": rep.get("val", {}).get("average_accuracy"),
          "val_worst_group_accuracy": rep.get("val", {}).get("worst_group_accuracy"),
          "wall_s": round(wall, 1), "jax_backend": jax.default_backend()}
  if jax.process_index() == 0:
    backbone.save_weights(out, jax.tree.map(np.asarray, variables), meta)
  return meta


def _arguments(p) -> None:
  p.add_argument("--data", required=True, help="a Waterbirds-format folder (e.g. from `spurjax data broad`)")
  p.add_argument("--out", required=True, help="weights file to write (.npz)")


def main(argv) -> int:
  from spurjax.config_util import config_from, parse_command
  args, rest = parse_command(argv, "spurjax pretrain", config_default=DEFAULT_CONFIG, workdir=None,
                             add_arguments=_arguments)
  if not args.out.endswith(".npz"):
    raise SpurjaxError(f"--out must end in .npz, got {args.out}")
  meta = run(config_from(args.config, rest), args.data, args.out, getattr(args, "workdir", None))
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB): {meta['model']}, "
        f"val accuracy {meta['val_accuracy']:.3f} at epoch {meta['selected_epoch']}, {meta['wall_s']:.0f} s")
  return 0
