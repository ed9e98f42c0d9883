"""The context every DDB stage wrapper receives: config, workdir, dataset, mesh and models."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from spurjax.data.table import Table


@dataclasses.dataclass
class Context:
  """What `run_<stage>(ctx, ...)` needs; each stage writes under `stage_dir(name)`.

  Attributes:
    cfg: the full config (`cfg.ddb.*` holds the DDB settings).
    workdir: the run's directory; stage folders live below it.
    table: the dataset.
    mesh: the device mesh (`spurjax.sharding.make_mesh()`).
    erm_variables: {"params", "batch_stats"} of the ERM classifier.
    model: the classifier module (`spurjax.models.get_model`).
    pipeline: the frozen diffusion model (`spurjax.diffusion.loading.Pipeline`), loaded lazily.
  """
  cfg: ml_collections.ConfigDict
  workdir: str
  table: Table
  mesh: jax.sharding.Mesh
  erm_variables: dict | None = None
  model: nn.Module | None = None
  pipeline: Any = None

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def load_pipeline(self):
    """`pipeline`, loading it from `cfg.diffusion.path` ("builtin" or a diffusers directory) on first use."""
    if self.pipeline is None:
      from spurjax.diffusion import loading, prior
      path = prior.resolve_diffusion_path(str(self.cfg.diffusion.get("path", "")))
      self.pipeline = loading.load_pipeline(path)
    return self.pipeline
