"""Stage segment: a mask of the causal object of every selected image (`ddb.segment.method`:
attention | diffedit | gradcam | given), optionally replaced by its grown box (`ddb.segment.box`).

Artefact `Masks`; on disk `segment/masks/<table index>.png` (at the base image size: the
classifier's eval resize, before its center crop) and `segment/iou.json` (mean IoU against the
dataset's masks for the chosen method and those of `ddb.segment.compare`, when the dataset has masks).
A method's mask that covers more than `ddb.segment.max_cover` of its image found no object: the run
says so in one line, `iou.json` lists those images under `coverage.too_large`, and the inpaint stage
does not edit them (a mask over the whole picture would repaint the scene, not the object).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from spurjax.data.boxes import box_masks
from spurjax.ddb.nouns import nouns_for
from spurjax.ddb.segment.masks import DIFFUSION_METHODS, mask_iou, mean_iou, method_name
from spurjax.ddb.segment.methods import method_masks, refine_settings, true_masks
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage


def check_config(ctx) -> None:
  """Before any work: the method names, the diffusion model directory when a method needs one, and
  the colour refinement's band when DiffEdit masks are made or compared."""
  cover = ctx.cfg.ddb.segment.max_cover
  if isinstance(cover, bool) or not isinstance(cover, (int, float)) or not 0 < cover <= 1:
    raise SpurjaxError(f"config ddb.segment.max_cover={cover!r} must be in (0, 1] (1: keep every mask)")
  if set(_methods(ctx.cfg)) & set(DIFFUSION_METHODS):
    from spurjax.diffusion.model_dir import unet_config
    unet_config(ctx.diffusion_dir)
    nouns_for(ctx.cfg, ctx.table)
  if "diffedit" in _methods(ctx.cfg):
    refine_settings(ctx.cfg.ddb.segment)


@dataclasses.dataclass
class Masks:
  """The stage's artefact: {table index: bool (H, W) mask} at the base image size, and the IoU summary.

  `raw` holds the method's masks before `ddb.segment.box` (the same as `masks` when no box is taken);
  the paste generator cuts donor objects by them.
  """
  masks: dict[int, np.ndarray]
  iou: dict
  raw: dict[int, np.ndarray] | None = None

  def __post_init__(self):
    if self.raw is None:
      self.raw = self.masks

  @property
  def too_large(self) -> set[int]:
    """Table indices whose mask covers more than `ddb.segment.max_cover` of the image: not edited."""
    return {int(i) for i in self.iou.get("coverage", {}).get("too_large", [])}


def _methods(cfg) -> list[str]:
  """The chosen method first, then the comparison methods (each once)."""
  out = [method_name(cfg.ddb.segment.method)]
  for m in cfg.ddb.segment.compare:
    m = method_name(m)
    if m not in out and m != "given":
      out.append(m)
  return out


def compute(ctx, inputs, folder: str) -> None:
  """Masks of the selected images by `ddb.segment.method` into `folder/masks/*.png`, and `iou.json` against the
  dataset's masks for that method and those of `ddb.segment.compare`."""
  from spurjax.data.images import save_png
  from spurjax.ddb.select import selected_indices

  table = ctx.table
  sel = selected_indices(inputs["select"])
  indices = [int(i) for c in sorted(sel) for i in sel[c]]
  classes = [int(table.y[i]) for i in indices]
  methods = _methods(ctx.cfg)
  images = np.stack([ctx.sources["eval"](i) for i in indices])
  box, grow = str(ctx.cfg.ddb.segment.box), int(ctx.cfg.ddb.segment.box_grow)
  boxed = lambda name, raw: raw if name == "given" else box_masks(raw, box, grow)  # noqa: E731
  raw = method_masks(ctx, methods[0], images, indices, classes, inputs["erm"])
  masks = boxed(methods[0], raw)
  truth = true_masks(table, indices, ctx.cfg)
  have = [n for n, t in enumerate(truth) if t is not None]
  iou = {"num_images": len(have), "method": methods[0], "mask_box": box, "mask_box_grow": grow,
         "mean_iou": {}, "mean_iou_raw": {}, "coverage": coverage(ctx.cfg, methods[0], raw, indices)}
  if have:
    scored = {methods[0]: raw}
    for other in methods[1:]:
      try:
        scored[other] = method_masks(ctx, other, images, indices, classes, inputs["erm"])
      except SpurjaxError as e:  # a comparison needing a model that is not there is skipped
        iou.setdefault("skipped", {})[other] = str(e)
    for name, m in scored.items():   # mean_iou: the masks as used (boxed); mean_iou_raw: the method's own
      used = masks if name == methods[0] else boxed(name, m)   # boxed once (not once per image)
      iou["mean_iou"][name] = mean_iou([used[n] for n in have], [truth[n] for n in have])
      iou["mean_iou_raw"][name] = mean_iou([m[n] for n in have], [truth[n] for n in have])
    iou["per_image"] = {str(indices[n]): mask_iou(masks[n], truth[n]) for n in have}
  if jax.process_index() == 0:
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    for i, m in zip(indices, masks):
      save_png(os.path.join(folder, "masks", f"{i}.png"), m)
    if raw is not masks:
      os.makedirs(os.path.join(folder, "raw"), exist_ok=True)
      for i, m in zip(indices, raw):
        save_png(os.path.join(folder, "raw", f"{i}.png"), m)
    with open(os.path.join(folder, "iou.json"), "w", encoding="utf-8") as f:
      json.dump({**iou, "indices": indices}, f, indent=1)


def coverage(cfg, method: str, raw, indices) -> dict:
  """The fraction of each image the method's masks cover, and the images over `ddb.segment.max_cover`
  (none for the dataset's own masks); says in one line how many there are."""
  frac = np.asarray([float(np.mean(m)) for m in raw]) if len(raw) else np.zeros(0)
  limit = float(cfg.ddb.segment.max_cover)
  over = [] if method == "given" else [int(i) for i, f in zip(indices, frac) if f > limit]
  if over and jax.process_index() == 0:
    print(f"segment: {len(over)} of {len(indices)} {method} masks cover more than {limit:.0%} of their image, so "
          f"they found no object: those images are not edited (ddb.segment.max_cover)", flush=True)
  return {"mean": float(frac.mean()) if len(frac) else 0.0, "max": float(frac.max()) if len(frac) else 0.0,
          "max_cover": limit, "too_large": over}


def load(ctx, folder: str) -> Masks:
  from spurjax.data.images import read_mask
  with open(os.path.join(folder, "iou.json"), encoding="utf-8") as f:
    iou = json.load(f)
  indices = iou.pop("indices")
  masks = {int(i): read_mask(os.path.join(folder, "masks", f"{i}.png")) for i in indices}
  raw = None
  if os.path.isdir(os.path.join(folder, "raw")):
    raw = {int(i): read_mask(os.path.join(folder, "raw", f"{i}.png")) for i in indices}
  return Masks(masks, iou, raw)


STAGE = Stage(name="segment", groups=("ddb.segment",), shared=("seed", "ddb.nouns", "diffusion.path"),
              upstream=("erm", "select"), compute=compute, load=load, validate=check_config,
              identity=lambda ctx: ctx.diffusion_digest if set(_methods(ctx.cfg)) & set(DIFFUSION_METHODS) else None)
