"""ERM: plain cross-entropy on the training split, through the one trainer, as a stage.

The ERM stage's fingerprint covers the seed, the model, optimiser and training settings, the
data settings that change what the network sees, and the table's content hash; a finished
folder (`report.json`, `ckpt/`) with that fingerprint is reused by `spurjax erm`, `spurjax run`,
the baselines and `bench methods`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from spurjax import distributed
from spurjax import models
from spurjax import report as R
from spurjax.metrics import format_split
from spurjax.errors import SpurjaxError
from spurjax.stages import Runner, Stage
from spurjax.train import backbone, loop

# data.* keys that change where or how fast images are read, not what the network sees.
_DATA_IO_KEYS = ("root", "cache_dir", "cache", "verify", "num_threads")


GROUPS = ("model", "optim", "train")   # the config groups the ERM stage owns


def shared_keys(cfg) -> list[str]:
  """The other keys an ERM run reads: the seed, the loss and the data settings that change what the
  network sees (`data.*` less where and how fast images are read)."""
  return ["seed", "method.loss"] + [f"data.{k}" for k in cfg.data if k not in _DATA_IO_KEYS]


def config_keys(cfg) -> tuple[str, ...]:
  """Every key an ERM run depends on (besides the table's content)."""
  return STAGE.config_keys(cfg)


@dataclasses.dataclass
class ErmResult:
  """The ERM stage's artefact: its report, the classifier and its selected variables."""
  report: dict
  model: Any
  variables: dict
  folder: str


def compute(ctx, inputs, folder: str) -> None:
  rep = loop.fit(ctx.cfg, ctx.table, folder, hooks=getattr(ctx, "hooks", ()), mesh=ctx.mesh, sources=ctx.sources,
                 name="erm")
  if distributed.is_main():
    R.write(folder, f"ERM on {ctx.table.name}", rep, ctx.table.class_names, ctx.table.place_names)


def load(ctx, folder: str) -> ErmResult:
  with open(os.path.join(folder, "report.json")) as f:
    rep = json.load(f)
  model = models.get_model(ctx.cfg.model.name, ctx.table.num_classes, loop.dtype_of(ctx.cfg))
  return ErmResult(rep, model, loop.load_best_variables(ctx.cfg, ctx.table, folder), folder)


def identity(ctx) -> dict:
  """The table's content and the initial weights' files (the shipped backbone may change)."""
  from spurjax.stages import file_digest
  m = ctx.cfg.model
  out = {"table": ctx.table_digest}
  if m.init_from:
    out["init_from"] = file_digest(backbone.resolve(m.init_from, m.name))
  if backbone.pretrained_path(m.pretrained):
    out["pretrained"] = file_digest(m.pretrained)
  return out


def validate(ctx) -> None:
  """Before any stage: a preset that starts from ImageNet weights is given them (or told `none`), and a
  weights file given exists."""
  value = str(ctx.cfg.model.pretrained)
  if value == backbone.REQUIRED:
    raise SpurjaxError(f"config model.pretrained: this recipe starts {ctx.cfg.model.name} from ImageNet weights; set "
                       "--config.model.pretrained=PATH (a torchvision state dict, .pth or .safetensors), or "
                       "--config.model.pretrained=none to start from random weights on purpose")
  if backbone.pretrained_path(value) and not os.path.isfile(value):
    raise SpurjaxError(f"config model.pretrained: file not found: {value}")


STAGE = Stage(name="erm", groups=GROUPS, shared=shared_keys, upstream=(), compute=compute, load=load, identity=identity,
              validate=validate)


def run(cfg, workdir: str, table=None, hooks=(), mesh=None) -> dict:
  """Trains ERM into the stage folder `workdir` (reused when its fingerprint matches; a killed run
  resumes from `workdir.tmp`); writes report.json / report.md and returns the report."""
  from spurjax import sharding as shd
  from spurjax.data import load_table
  from spurjax.context import Context
  table = table if table is not None else load_table(cfg.data)  # validated before anything is written
  ctx = Context(cfg=cfg, workdir=os.path.dirname(os.path.abspath(workdir)), table=table,
                mesh=mesh or shd.make_mesh(), dirs={"erm": workdir}, hooks=tuple(hooks))
  STAGE.check(ctx)
  runner = Runner(ctx)
  res = runner.run(STAGE)
  runner.report()
  for s in ("val", "test"):
    if s in res.report:
      print(format_split(s, res.report[s]))
  return res.report
