"""Stage invert: one textual-inversion token per class, learned on the selected majority images.

Core: `spurjax.diffusion.invert.learn_tokens` (its checkpoints resume a killed run inside the
stage's `.tmp` folder). `ddb.invert.mode=per_class` runs one inversion per class, each in its own
`class{c}/` subfolder (a finished class is not redone), and writes the combined files at the top.
Artefact `Tokens`: {class: token} and the pipeline with the learned rows;
on disk `learned_embeds.safetensors` and `tokens.json`. With `ddb.invert.mask=segment` the
tokens are learned on the segment stage's masks (which then runs first). `ddb.invert.steps = 0` learns no token:
prompts then use the class noun alone (the initialiser-token ablation); the paste generator
(`ddb.inpaint.generator=paste`) needs none either.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from spurjax.ddb.nouns import nouns_for
from spurjax.ddb.select import selected_indices
from spurjax.diffusion import invert as inv, token_embeds
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage

INFO_FILE = "tokens.json"


@dataclasses.dataclass
class Tokens:
  """{class: token string} ("" for none) and the diffusion pipeline that knows them."""
  tokens: dict[int, str]
  pipeline: Any
  embeds_file: str | None = None


def device_batch(batch: int, accum: int, devices: int) -> tuple[int, int]:
  """(per-step batch, accumulation) keeping batch * accum when possible, batch divisible by devices."""
  total = batch * accum
  b = -(-batch // devices) * devices
  return b, max(1, total // b)


def _learns(cfg) -> bool:
  """Whether tokens are learned: not for the paste or redraw generators, nor with ddb.invert.steps = 0."""
  from spurjax.ddb.inpaint import MODEL_FREE
  return str(cfg.ddb.inpaint.generator) not in MODEL_FREE and int(cfg.ddb.invert.steps) > 0


INVERT_MASKS = ("full", "segment")


def _on_masks(cfg) -> bool:
  """Whether tokens are learned on the segment stage's masks (`ddb.invert.mask=segment`)."""
  mode = str(cfg.ddb.invert.mask)
  if mode not in INVERT_MASKS:
    raise SpurjaxError(f"config ddb.invert.mask = {mode!r}; valid: {', '.join(INVERT_MASKS)}")
  return _learns(cfg) and mode == "segment"


def check_config(ctx) -> None:
  """Before any work: `ddb.invert.steps` is not negative, `ddb.invert.mask`, `mode`, `templates` and
  `flip` are valid, the model is a diffusers directory, and `segment` has an inpainting UNet to learn with."""
  d = ctx.cfg.ddb.invert
  if d.mode not in inv.MODES:
    raise SpurjaxError(f"config ddb.invert.mode = {d.mode!r}; valid: {', '.join(inv.MODES)}")
  if d.templates not in inv.TEMPLATES:
    raise SpurjaxError(f"config ddb.invert.templates = {d.templates!r}; valid: {', '.join(inv.TEMPLATES)}")
  if isinstance(d.flip, bool) or not isinstance(d.flip, (int, float)) or not 0.0 <= d.flip <= 1.0:
    raise SpurjaxError(f"config ddb.invert.flip = {d.flip!r} must be a probability in [0, 1]")
  steps, images = d.steps, d.images
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise SpurjaxError(f"config ddb.invert.steps={steps!r} must be an integer >= 0 (0: no token)")
  if isinstance(images, bool) or not isinstance(images, int) or images < 0:
    raise SpurjaxError(f"config ddb.invert.images={images!r} must be an integer >= 0 (0: every selected image)")
  if _learns(ctx.cfg):
    from spurjax.diffusion.model_dir import unet_config
    unet_config(ctx.diffusion_dir)
    nouns_for(ctx.cfg, ctx.table)
  if not _on_masks(ctx.cfg):
    return
  from pathlib import Path

  from spurjax.diffusion import loading
  unet = Path(ctx.diffusion_dir) / "unet" / "config.json"
  if not loading.is_inpaint_config(loading.read_json(unet)):
    raise SpurjaxError(f"config ddb.invert.mask=segment needs an inpainting UNet ([noisy, mask, masked] input); "
                       f"{unet} describes a plain one")


def compute(ctx, inputs, folder: str) -> None:
  d = ctx.cfg.ddb.invert
  steps = int(d.steps)
  if not _learns(ctx.cfg):
    if jax.process_index() == 0:
      with open(os.path.join(folder, INFO_FILE), "w") as f:
        json.dump({"tokens": {}, "steps": 0}, f)
    return
  idx = selected_indices(inputs["select"])
  if int(d.images) > 0:   # the lowest-loss ones: a selection is in increasing loss order
    idx = {c: v[:int(d.images)] for c, v in idx.items()}
  images = {c: np.stack([ctx.table.image(int(i)) for i in idx[c]]) for c in sorted(idx)}
  masks = None
  if _on_masks(ctx.cfg):
    seg = inputs["segment"].masks
    masks = {c: np.stack([seg[int(i)] for i in idx[c]]) for c in sorted(idx)}
  batch, accum = device_batch(int(d.batch), int(d.accum), ctx.mesh.devices.size)
  inv.learn_tokens(ctx.load_pipeline(), images, nouns_for(ctx.cfg, ctx.table), steps=steps, lr=float(d.lr),
                   batch=batch, grad_accum=accum, seed=int(ctx.cfg.seed), workdir=folder, mesh=ctx.mesh,
                   masks_by_class=masks, mask_weight=float(d.mask_weight), mode=str(d.mode),
                   templates=str(d.templates), flip=float(d.flip))


def load(ctx, folder: str) -> Tokens:
  with open(os.path.join(folder, INFO_FILE)) as f:
    info = json.load(f)["tokens"]
  from spurjax.ddb.inpaint import MODEL_FREE
  pipeline = None if str(ctx.cfg.ddb.inpaint.generator) in MODEL_FREE else ctx.load_pipeline()
  if not info:
    return Tokens({c: "" for c in range(ctx.table.num_classes)}, pipeline)
  embeds = os.path.join(folder, token_embeds.EMBEDS_FILE)
  pipeline = token_embeds.load_learned_embeds(pipeline, embeds)
  return Tokens({int(v["class"]): t for t, v in info.items()}, pipeline, embeds)


STAGE = Stage(name="invert", groups=("ddb.invert",),
              shared=("seed", "diffusion.path", "ddb.nouns", "ddb.inpaint.generator"),
              upstream=lambda cfg: ("select", "segment") if _on_masks(cfg) else ("select",),
              compute=compute, load=load, validate=check_config,
              identity=lambda ctx: ctx.diffusion_digest if _learns(ctx.cfg) else None)
