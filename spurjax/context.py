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
    pipeline: the frozen diffusion model (`spurjax.diffusion.loading.Pipeline`), loaded lazily; once
      `load_pipeline()` returned it, it computes in `diffusion_dtype` with its weights on the mesh's devices.
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
  _prepared: Any = None

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
  def diffusion_dtype(self) -> str:
    """`diffusion.dtype` resolved on this backend: "float32" or "bfloat16" ("auto": bfloat16 on a GPU or
    TPU, float32 on the CPU); a bad value is a one-line SpurjaxError naming the key."""
    from spurjax.diffusion.precision import resolve_dtype
    return resolve_dtype(self.cfg.diffusion.dtype)

  def _with_dtype(self, digest: str) -> str:
    """A model digest as the stages' identity: the resolved dtype joins it unless float32 (whose folders,
    made before the setting existed, stay valid), so bf16 results are never taken for fp32 ones."""
    return digest if self.diffusion_dtype == "float32" else f"{digest}:{self.diffusion_dtype}"

  @functools.cached_property
  def diffusion_digest(self) -> str:
    """Identity of the diffusion model as the stages run it: its directory's, or the weights' of one given
    in memory, with the compute dtype (`_with_dtype`)."""
    from spurjax.stages import directory_digest, tree_digest
    if self.pipeline is not None and not os.path.isdir(str(self.cfg.diffusion.path)) \
        and str(self.cfg.diffusion.path) != "builtin":
      return self._with_dtype("in-memory:" + tree_digest((self.pipeline.unet_params, self.pipeline.text_params)))
    return self._with_dtype(directory_digest(self.diffusion_dir))

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
    if not self.separate_inpainter:
      return self.diffusion_digest
    return self._with_dtype(directory_digest(self.inpaint_dir))

  def _prepare(self, pipeline):
    """`pipeline` computing in `diffusion_dtype`, its weights replicated on the mesh's devices once
    (`spurjax.diffusion.precision.prepare`, which says what is stored in which precision)."""
    from spurjax.diffusion.precision import prepare
    return prepare(pipeline, self.diffusion_dtype, self.mesh)

  def load_inpaint_pipeline(self):
    """The inpaint stage's model: `load_pipeline()` unless `diffusion.inpaint_path` is set (then that
    model, prepared as `load_pipeline()` prepares the first)."""
    if not self.separate_inpainter:
      return self.load_pipeline()
    if self._inpainter is None:
      from spurjax.diffusion import loading
      self._inpainter = self._prepare(loading.load_pipeline(self.inpaint_dir))
    return self._inpainter

  def release_pipeline(self) -> None:
    """Forgets the loaded first model (a later `load_pipeline()` reads it again); its digest is kept."""
    _ = self.diffusion_digest   # an in-memory model's identity is its weights: taken while they are here
    self.pipeline = self._prepared = None

  def load_pipeline(self):
    """`pipeline`, loading it from `cfg.diffusion.path` ("builtin" or a diffusers directory) on first use.

    The model computes in `diffusion_dtype` and its weights are put on the mesh's devices once (a model
    given in memory is prepared likewise on the first call), so the stage's jitted calls upload nothing.
    """
    if self.pipeline is None:
      from spurjax.diffusion import loading
      self.pipeline = self._prepared = self._prepare(loading.load_pipeline(self.diffusion_dir))
    elif self.pipeline is not self._prepared:
      _ = self.diffusion_digest   # a model given in memory: its identity is its weights as given
      self.pipeline = self._prepared = self._prepare(self.pipeline)
    return self.pipeline
