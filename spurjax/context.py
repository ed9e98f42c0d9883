"""The context every stage receives: config, workdir, dataset, mesh, decoded images, diffusion model."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections

from spurjax.data.table import Table


@dataclasses.dataclass(eq=False)
class Context:
  """What a stage's `compute(ctx, inputs, folder)` needs.

  Attributes:
    cfg: the full config (`cfg.ddb.*` holds the DDB settings).
    workdir: the run's directory; stage folders live below it.
    table: the dataset.
    mesh: the device mesh (`spurjax.sharding.make_mesh()`).
    dirs: stage folders placed elsewhere than `workdir/<stage>` (e.g. a shared ERM run).
    pipeline: the frozen diffusion model (`spurjax.diffusion.loading.Pipeline`), loaded lazily.
    hooks: per-epoch callbacks of the training stages (`spurjax.train.loop.fit`).
  """
  cfg: ml_collections.ConfigDict
  workdir: str
  table: Table
  mesh: jax.sharding.Mesh
  dirs: dict = dataclasses.field(default_factory=dict)
  pipeline: Any = None
  hooks: tuple = ()
  _sources: dict | None = None
  _inpainter: Any = None

  def stage_dir(self, name: str) -> str:
    return self.dirs.get(name) or os.path.join(self.workdir, name)

  @property
  def sources(self) -> dict:
    """The dataset's image sources ({"train", "eval"}), made (and, with data.cache, decoded) once per run."""
    if self._sources is None:
      from spurjax.data.pipeline import make_sources
      self._sources = make_sources(self.cfg, self.table)
    return self._sources

  @functools.cached_property
  def table_digest(self) -> str:
    from spurjax.stages import table_digest
    return table_digest(self.table)

  @functools.cached_property
  def diffusion_dir(self) -> str:
    from spurjax.diffusion.builtin import resolve_diffusion_path
    return resolve_diffusion_path(str(self.cfg.diffusion.path))

  @functools.cached_property
  def diffusion_digest(self) -> str:
    """Identity of the diffusion model: its directory's, or the weights' of one given in memory."""
    from spurjax.stages import directory_digest, tree_digest
    if self.pipeline is not None and not os.path.isdir(str(self.cfg.diffusion.path)) \
        and str(self.cfg.diffusion.path) != "builtin":
      return "in-memory:" + tree_digest((self.pipeline.unet_params, self.pipeline.text_params))
    return directory_digest(self.diffusion_dir)

  @property
  def separate_inpainter(self) -> bool:
    """Whether `diffusion.inpaint_path` names a second model for the inpaint stage."""
    return bool(str(self.cfg.diffusion.get("inpaint_path", "") or ""))

  @functools.cached_property
  def inpaint_dir(self) -> str:
    """The inpaint stage's model directory: `diffusion.inpaint_path`, else `diffusion_dir`."""
    if not self.separate_inpainter:
      return self.diffusion_dir
    from spurjax.diffusion.builtin import resolve_diffusion_path
    return resolve_diffusion_path(str(self.cfg.diffusion.inpaint_path), key="diffusion.inpaint_path")

  @functools.cached_property
  def inpaint_digest(self) -> str:
    from spurjax.stages import directory_digest
    return directory_digest(self.inpaint_dir) if self.separate_inpainter else self.diffusion_digest

  def load_inpaint_pipeline(self):
    """The inpaint stage's model: `load_pipeline()` unless `diffusion.inpaint_path` is set."""
    if not self.separate_inpainter:
      return self.load_pipeline()
    if self._inpainter is None:
      from spurjax.diffusion import loading
      self._inpainter = loading.load_pipeline(self.inpaint_dir)
    return self._inpainter

  def release_pipeline(self) -> None:
    """Forgets the loaded first model (a later `load_pipeline()` reads it again); its digest is kept."""
    _ = self.diffusion_digest   # an in-memory model's identity is its weights: taken while they are here
    self.pipeline = None

  def load_pipeline(self):
    """`pipeline`, loading it from `cfg.diffusion.path` ("builtin" or a diffusers directory) on first use."""
    if self.pipeline is None:
      from spurjax.diffusion import loading
      self.pipeline = loading.load_pipeline(self.diffusion_dir)
    return self.pipeline
