"""Stage inpaint: the causal object of each majority image replaced by another class's
(`ddb.inpaint.*`); the result is labelled with that class.

Artefact `Edits`; on disk `inpaint/images/<index>_to<j>_s<s>.png` and `inpaint/edits.csv` with
columns source_index, source_file, source_class, target_class, sample, file (relative to
`inpaint/`), mask_file, written chunk by chunk (a killed run resumes from the chunks it wrote).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Mapping

import jax
import numpy as np

from spurjax.data.resize import resize_masks
from spurjax.ddb.inpaint.generators import diffuse_all, paste_all, redraw_all, redraw_source
from spurjax.ddb.inpaint.prompts import CSV_COLUMNS, GENERATORS, MODEL_FREE, class_prompts, resolve_mode
from spurjax.ddb.nouns import nouns_for
from spurjax.diffusion import guidance, sampling_loop
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage


def read_edits(stage_dir: str) -> list[dict]:
  """The rows of `edits.csv` (ints parsed) with `path` = the absolute image path."""
  path = os.path.join(stage_dir, "edits.csv")
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: not found (stage inpaint has not finished)")
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or []) and c != "mask_file"]
    if missing:
      raise SpurjaxError(f"{path}: missing columns {missing}")
    for n, row in enumerate(reader, start=2):
      try:
        for k in ("source_index", "source_class", "target_class", "sample"):
          row[k] = int(row[k])
      except ValueError:
        raise SpurjaxError(f"{path}: row {n}: non-integer value") from None
      row["path"] = os.path.join(stage_dir, row["file"])
      row["mask_path"] = os.path.join(stage_dir, row["mask_file"]) if row.get("mask_file") else None
      rows.append(row)
  return rows


def source_masks(masks, indices, shape) -> np.ndarray:
  """bool (N, *shape): the segment stage's mask of each selected image, resized to the images' shape."""
  out = np.zeros((len(indices),) + tuple(shape), bool)
  for n, i in enumerate(indices):
    m = masks.get(int(i)) if isinstance(masks, Mapping) else None
    if m is None:
      raise SpurjaxError(f"inpaint: no mask for selected image {int(i)}")
    m = np.asarray(m)
    if m.shape != tuple(shape):
      m = resize_masks(m[None].astype(np.float32), shape)[0]
    out[n] = m.astype(bool) if m.dtype == bool else m >= 0.5
  return out


@dataclasses.dataclass
class Edits:
  """The stage's artefact: one row of `edits.csv` per counterfactual (ints parsed, `path` absolute)."""
  rows: list[dict]

  def __len__(self):
    return len(self.rows)


def compute(ctx, inputs, folder: str) -> None:
  """Generates the counterfactuals of the selected images into `folder` (chunks already there from a
  killed run with the same fingerprint are kept)."""
  from spurjax.ddb.select import selected_indices

  generator = str(ctx.cfg.ddb.inpaint.generator)
  if generator not in GENERATORS:
    raise SpurjaxError(f"config ddb.inpaint.generator={generator!r} must be one of {', '.join(GENERATORS)}")
  sel = selected_indices(inputs["select"])
  classes = sorted(sel)
  skip = inputs["segment"].too_large   # masks that found no object: editing would repaint the scene
  sel = {c: [int(i) for i in sel[c] if int(i) not in skip] for c in classes}
  indices = [i for c in classes for i in sel[c]]
  source_classes = [c for c in classes for _ in sel[c]]
  if not indices:
    raise SpurjaxError("inpaint: no selected image to edit" + (
        f" (every mask covers more than ddb.segment.max_cover={ctx.cfg.ddb.segment.max_cover} of its image: "
        "no object found; try another ddb.segment.method)" if skip else ""))
  main = jax.process_index() == 0
  if main:
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  images = np.stack([ctx.sources["eval"](i) for i in indices])
  stage_masks = source_masks(inputs["segment"].masks, indices, images.shape[1:3])
  if generator == "paste":   # donors are cut by the method's own masks, not their boxes
    donor_masks = source_masks(inputs["segment"].raw, indices, images.shape[1:3])
    rows = paste_all(ctx, folder, images, stage_masks, donor_masks, indices, source_classes)
  elif generator == "redraw":
    rows = redraw_all(ctx, folder, images, indices, source_classes)
  else:
    rows = diffuse_all(ctx, folder, inputs["invert"], images, stage_masks, indices, source_classes)
  if main:
    with open(os.path.join(folder, "edits.csv.tmp"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
      writer.writeheader()
      writer.writerows(rows)
    os.replace(os.path.join(folder, "edits.csv.tmp"), os.path.join(folder, "edits.csv"))


def check_config(ctx) -> None:
  """Before any work: `ddb.inpaint.generator` is known; `ddb.inpaint.template` and `ddb.inpaint.attributes` make valid prompts,
  `ddb.inpaint.eta` is in [0, 1], `ddb.inpaint.strength` in (0, 1] and `ddb.inpaint.guidance_interval` () or
  (t_min, t_max) (diffusion generator); the data is the built-in benchmark (redraw)."""
  cfg = ctx.cfg
  if str(cfg.ddb.inpaint.generator) not in GENERATORS:
    raise SpurjaxError(f"config ddb.inpaint.generator={cfg.ddb.inpaint.generator!r} must be one of {', '.join(GENERATORS)}")
  if str(cfg.ddb.inpaint.generator) == "redraw":   # only the built-in benchmark can draw a scene again: on every process
    redraw_source(ctx.table, 0)
  if str(cfg.ddb.inpaint.generator) in MODEL_FREE:
    return
  eta = cfg.ddb.inpaint.eta
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
    raise SpurjaxError(f"config ddb.inpaint.eta={eta!r} must be a number in [0, 1]")
  strength = cfg.ddb.inpaint.strength
  if isinstance(strength, bool) or not isinstance(strength, (int, float)):
    raise SpurjaxError(f"config ddb.inpaint.strength={strength!r} must be a number in (0, 1]")
  try:
    sampling_loop.first_step(int(cfg.ddb.inpaint.num_steps), float(strength))
  except SpurjaxError as e:
    raise SpurjaxError(f"config ddb.inpaint.strength: {e}") from None
  try:
    guidance.check_guidance_interval(tuple(cfg.ddb.inpaint.guidance_interval))
  except (SpurjaxError, TypeError) as e:
    raise SpurjaxError(f"config ddb.inpaint.guidance_interval: {e}") from None
  class_prompts(str(cfg.ddb.inpaint.template), None, nouns_for(cfg, ctx.table), int(ctx.table.num_classes),
                tuple(cfg.ddb.inpaint.attributes))
  from spurjax.diffusion.model_dir import unet_channels
  key = "diffusion.inpaint_path" if ctx.separate_inpainter else "diffusion.path"
  in_channels, out_channels = unet_channels(ctx.inpaint_dir, key)
  try:
    resolve_mode(str(cfg.ddb.inpaint.mode), in_channels, out_channels)
  except SpurjaxError as e:
    raise SpurjaxError(f"{e} ({key} {ctx.inpaint_dir})") from None
  if ctx.separate_inpainter:   # the learned token rows must fit the second model's text encoder
    from spurjax.diffusion.token_embeds import check_transferable
    unet_channels(ctx.diffusion_dir)
    check_transferable(ctx.diffusion_dir, ctx.inpaint_dir, where=(f"diffusion.path {ctx.diffusion_dir}",
                                                                  f"diffusion.inpaint_path {ctx.inpaint_dir}"))


def load(ctx, folder: str) -> Edits:
  return Edits(read_edits(folder))


STAGE = Stage(name="inpaint", groups=("ddb.inpaint",),
              shared=("seed", "diffusion.path", "diffusion.inpaint_path", "ddb.nouns"),
              upstream=("select", "invert", "segment"), compute=compute, load=load, validate=check_config,
              identity=lambda ctx: None if str(ctx.cfg.ddb.inpaint.generator) in MODEL_FREE else ctx.inpaint_digest)
