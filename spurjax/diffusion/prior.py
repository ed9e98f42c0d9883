"""Small text-to-image priors trained from scratch: `spurjax prior train`.

  spurjax prior train --data DIR --out PRIOR_DIR [--config configs/prior_synth.py[:tiny]]
                      [--workdir W] [--config.key=value ...]

`DIR` is an imagefolder (`spurjax.data.imagefolder`: `metadata.csv` or `metadata.jsonl` with
columns `file_name` and `text`, optionally `mask_file_name` with object masks; images relative to
`DIR`). The result is a diffusers-format directory (`spurjax.diffusion.prior_model`: pixel-space
UNet, tiny CLIP text encoder with a truncated CLIP BPE vocabulary, DDIM scheduler) that
`loading.load_pipeline` reads like Stable Diffusion 2. Training runs through the shared loop in
`spurjax.diffusion.train` (checkpoints and auto-resume in `--workdir`). Sampling from a prior:
`spurjax.diffusion.pipeline_sampling`; the shipped prior: `spurjax.diffusion.builtin`.

With `cfg.inpaint` the UNet is an inpainting UNet in the SD-2-inpainting layout: its input is
[noisy image, mask, masked image] (3 + 1 + 3 channels in pixel space), and every training
example gets a mask drawn from the mix in `cfg.masks`: the whole image (so the same model
draws from text alone and serves textual inversion), the object's bounding box grown by a
few pixels, the square around that box, a box of another aspect ratio around it (so the
mask's shape does not tell the class), or a random box (box geometry: `spurjax.data.boxes`). Box
masks need the object masks (`mask_file_name`). A plain captioned corpus has none: its examples get
whole-image masks and random boxes, the box kinds' weight going to the random boxes
(`plain_corpus_mix`), and the run says so in one line.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from spurjax import rng as rng_ids
from spurjax import sharding as shd
from spurjax.data.boxes import box_mask, fit_interval, grow_box, object_boxes, square_box
from spurjax.data.imagefolder import MASK_COLUMN, load_images, load_masks, read_imagefolder, read_mask_paths
from spurjax.diffusion import loading, tokenizer as tok_lib, train as dtrain
from spurjax.diffusion import unet as unet_lib
from spurjax.diffusion.prior_model import new_pipeline
from spurjax.errors import SpurjaxError

MASK_KINDS = ("full", "box", "square", "aspect", "random")
_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior_synth.py"


# ----------------------------------------------------------------------------- training masks


def mask_mix(cfg_masks) -> np.ndarray:
  """The probabilities of MASK_KINDS from `cfg.masks` (normalised)."""
  p = np.asarray([float(cfg_masks.get(k, 0.0)) for k in MASK_KINDS], np.float64)
  if (p < 0).any() or p.sum() <= 0:
    raise SpurjaxError(f"config masks: the weights of {', '.join(MASK_KINDS)} must be >= 0, not all 0; got {p}")
  return p / p.sum()


def plain_corpus_mix(probs: np.ndarray) -> np.ndarray:
  """The mask mix for a corpus without object masks: the box kinds' weight moved to random boxes."""
  probs = np.asarray(probs, np.float64).copy()
  boxed = [MASK_KINDS.index(k) for k in ("box", "square", "aspect")]
  probs[MASK_KINDS.index("random")] += probs[boxed].sum()
  probs[boxed] = 0.0
  return probs


def training_masks(batch: int, boxes: np.ndarray | None, size: int, rng: np.random.Generator, probs, *,
                   grow=(1, 3), max_aspect: float = 2.0, random_side=(0.25, 0.75)) -> np.ndarray:
  """float32 (batch, size, size) training masks, one kind per example drawn with `probs` over MASK_KINDS.

  `boxes` (batch, 4) are the objects' boxes at `size` (None: only "full" and "random" are drawn).
  box: the object box grown by U{grow[0]..grow[1]} px; square: the square around that; aspect: a
  box containing it with aspect ratio (height / width) log-uniform in [1/max_aspect, max_aspect],
  placed at random over it; random: a box with sides U(random_side) x size anywhere.
  """
  probs = np.asarray(probs, np.float64)
  if boxes is None:
    keep = np.asarray([k in ("full", "random") for k in MASK_KINDS], np.float64)
    if not (probs * keep).sum():
      raise SpurjaxError("training masks: box masks need object masks (an imagefolder column "
                         f"'{MASK_COLUMN}') and no full or random masks are configured")
    probs = probs * keep / (probs * keep).sum()
  kinds = rng.choice(len(MASK_KINDS), size=batch, p=probs)
  out = np.zeros((batch, size, size), np.float32)
  for i, k in enumerate(kinds):
    kind = MASK_KINDS[k]
    if kind == "full":
      out[i] = 1.0
      continue
    if kind == "random":
      h, w = (np.asarray(rng.uniform(*random_side, 2)) * size).round().astype(int)
      y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
      out[i, y:y + h, x:x + w] = 1.0
      continue
    box = grow_box(boxes[i], int(rng.integers(int(grow[0]), int(grow[1]) + 1)), size)
    if kind == "square":
      box = square_box(box, size)
    elif kind == "aspect":
      y0, x0, y1, x1 = box
      h, w = y1 - y0, x1 - x0
      ratio = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
      if h / w < ratio:
        h = min(size, int(round(w * ratio)))
      else:
        w = min(size, int(round(h / ratio)))
      ya, yb = fit_interval(y0 - int(rng.integers(0, h - (y1 - y0) + 1)), h, size)
      xa, xb = fit_interval(x0 - int(rng.integers(0, w - (x1 - x0) + 1)), w, size)
      box = (ya, xa, yb, xb)
    out[i] = box_mask(box, size)
  return out


# ----------------------------------------------------------------------------- training


def _decay(t) -> dict:
  """make_tx's decay arguments from a config's train section (lr_schedule constant | cosine)."""
  kind = str(t.get("lr_schedule", "constant"))
  if kind == "constant":
    return {}
  if kind != "cosine":
    raise SpurjaxError(f"config train.lr_schedule={kind!r} must be 'constant' or 'cosine'")
  return {"decay_steps": max(int(t.steps) - int(t.warmup_steps), 1), "end_lr_frac": float(t.get("end_lr_frac", 0.0))}


def train_prior(cfg, data_dir: str, out_dir: str, workdir: str | None = None) -> Path:
  """Trains a prior on an imagefolder and writes it as a diffusers directory; returns `out_dir`."""
  workdir = workdir or out_dir.rstrip("/\\") + ".work"
  paths, texts = read_imagefolder(data_dir)   # every input is checked before anything is written
  inpaint = bool(cfg.get("inpaint", False))
  mask_paths = read_mask_paths(data_dir) if inpaint else None
  probs = mask_mix(cfg.masks) if inpaint else None
  notes = []
  if inpaint and mask_paths is None and any(probs[MASK_KINDS.index(k)] > 0 for k in ("box", "square", "aspect")):
    probs = plain_corpus_mix(probs)
    notes.append(f"no object masks (column '{MASK_COLUMN}'): masks are whole images ({probs[0]:.2f}) and random "
                 f"boxes ({probs[MASK_KINDS.index('random')]:.2f}), not object boxes")
  t = cfg.train
  decay = _decay(t)
  object_weight = float(t.get("object_weight", 1.0))
  object_t_max = float(t.get("object_t_max", 1.0))
  if not 0.0 < object_t_max <= 1.0:
    raise SpurjaxError(f"config train.object_t_max={object_t_max} must be in (0, 1]")
  if object_weight != 1.0 and mask_paths is None:
    notes.append(f"train.object_weight={object_weight} ignored (no object masks)")
    object_weight = 1.0
  for note in notes:
    print(f"prior: {data_dir}: {note}", flush=True)
  mesh = shd.make_mesh()
  bs = int(t.batch_size)
  if bs % mesh.devices.size:
    raise SpurjaxError(f"config train.batch_size={bs} is not divisible by the {mesh.devices.size} devices")
  res = int(cfg.resolution)
  images = load_images(paths, res)
  obj_masks = load_masks(mask_paths, res) if mask_paths is not None else None
  boxes = object_boxes(obj_masks) if obj_masks is not None else None
  if object_weight == 1.0:
    obj_masks = None
  os.makedirs(workdir, exist_ok=True)
  pipe = new_pipeline(cfg, workdir)
  ids = tok_lib.encode(pipe.tokenizer, texts)
  uncond_ids = tok_lib.encode(pipe.tokenizer, [""])[0]
  model = dtrain.Model.from_pipeline(pipe)
  params = dtrain.pipeline_params(pipe)
  prefixes = [("unet",)] + ([("text",)] if bool(cfg.text.train) else [])
  paths_t = dtrain.trainable_paths(params, prefixes)
  accum = int(t.grad_accum)
  tx = dtrain.make_tx(lr=float(t.lr), optimizer="adamw", weight_decay=float(t.weight_decay),
                      grad_accum=accum, clip_norm=float(t.clip_norm), warmup_steps=int(t.warmup_steps),
                      **decay)
  ema_decay = float(t.ema_decay)
  state = dtrain.init_state(params, paths_t, tx, ema=ema_decay > 0)
  step_fn = dtrain.make_train_step(model, tx, paths_t, mesh, cond_drop=float(t.cond_drop), uncond_ids=uncond_ids,
                                   ema_decay=ema_decay, grad_accum=accum, mask_weight=float(t.get("mask_weight", 1.0)),
                                   min_snr_gamma=float(t.get("min_snr_gamma", 0.0)), object_weight=object_weight,
                                   object_t_max=object_t_max)
  seed, flip = int(cfg.seed), bool(t.flip)
  if inpaint:
    m = cfg.masks
    mask_opts = dict(grow=tuple(int(g) for g in m.grow), max_aspect=float(m.max_aspect),
                     random_side=tuple(float(r) for r in m.random_side))

  calls = [0]  # micro-steps run by this process (a resumed run starts from its checkpoint)

  def batch_fn(i: int) -> dict:
    calls[0] += 1
    idx = dtrain.sample_batch_indices(len(images), bs, seed, i)
    px = images[idx]
    out = {"ids": ids[idx]}
    if inpaint:
      masks = training_masks(bs, None if boxes is None else boxes[idx], res, np.random.default_rng([seed, 3, i]),
                             probs, **mask_opts)
    if flip:
      f = np.random.default_rng([seed, rng_ids.PRIOR_FLIP, i]).random(bs) < 0.5
      px = np.where(f[:, None, None, None], px[:, :, ::-1], px)
      if inpaint:
        masks = np.where(f[:, None, None], masks[:, :, ::-1], masks)
    out["pixels"] = px
    if inpaint:
      out["masks"] = masks
    if obj_masks is not None:
      obj = obj_masks[idx]
      out["objects"] = np.where(f[:, None, None], obj[:, :, ::-1], obj) if flip else obj
    return out

  steps = int(t.steps) * accum
  print(f"prior: {len(images)} images at {res} px, {'inpainting ' if inpaint else ''}UNet "
        f"{unet_lib.count_params(params['unet']) / 1e6:.2f} M params, "
        f"text encoder {unet_lib.count_params(params['text']) / 1e6:.2f} M ({'trained' if cfg.text.train else 'frozen'}), "
        f"{int(t.steps)} steps of batch {bs}x{accum}", flush=True)
  t0 = time.time()
  state, history = dtrain.train(step_fn, state, batch_fn, steps=steps, mesh=mesh, rng=jax.random.key(seed + 1),
                                workdir=workdir, ckpt_every=int(t.ckpt_every), desc="prior",
                                log_every=int(t.log_every), log_file=os.path.join(workdir, "loss.jsonl"))
  final = dtrain.ema_params(state, paths_t)
  out = loading.save_pipeline(loading.Pipeline(unet=pipe.unet, unet_params=final["unet"],
                                               text_encoder=pipe.text_encoder, text_params=final["text"],
                                               tokenizer=pipe.tokenizer, scheduler_config=pipe.scheduler_config),
                              out_dir)
  wall = time.time() - t0
  info = {"data": os.path.abspath(data_dir), "images": len(images), "object_masks": mask_paths is not None,
          "mask_mix": dict(zip(MASK_KINDS, map(float, probs))) if inpaint else None,
          "steps": int(t.steps), "grad_accum": accum, "batch_size": bs, "wall_s_this_run": round(wall, 1),
          "steps_this_run": calls[0] // accum, "images_per_s_this_run": round(calls[0] * bs / wall, 2),
          "final_loss": history[-1]["loss"] if history else None, "config": cfg.to_dict()}
  (Path(out) / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
  print(f"prior: wrote {out} (final loss {info['final_loss']})", flush=True)
  return out


# ----------------------------------------------------------------------------- CLI


def _arguments(p) -> None:
  p.add_argument("--data", required=True, help="imagefolder with metadata.csv/.jsonl (file_name, text)")
  p.add_argument("--out", required=True, help="output diffusers directory")


def main(argv: Sequence[str] | None = None) -> int:
  """`spurjax prior train ...` (argv starts after `prior`)."""
  from spurjax.config_util import config_from, parse_command
  argv = list(argv or [])
  if not argv or argv[0] != "train":
    raise SpurjaxError("spurjax prior: expected 'train' (spurjax prior train --data DIR --out PRIOR_DIR)")
  args, overrides = parse_command(argv[1:], "spurjax prior train", config_default=str(_DEFAULT_CONFIG),
                                  workdir=None, add_arguments=_arguments)
  train_prior(config_from(args.config, overrides), args.data, args.out, args.workdir)
  return 0
