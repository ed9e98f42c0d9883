"""Small text-to-image priors trained from scratch: `spurjax prior train`, and the shipped prior.

  spurjax prior train --data DIR --out PRIOR_DIR [--config configs/prior_synth.py[:tiny]]
                      [--workdir W] [--config.key=value ...]

`DIR` is an imagefolder (`metadata.csv` or `metadata.jsonl` with columns `file_name` and
`text`, optionally `mask_file_name` with object masks; images relative to `DIR`). The result
is a diffusers-format directory (pixel-space UNet, tiny CLIP text encoder with a truncated
CLIP BPE vocabulary, DDIM scheduler) that `loading.load_pipeline` reads like Stable
Diffusion 2. Training runs through the shared loop in `spurjax.diffusion.train`
(checkpoints and auto-resume in `--workdir`).

With `cfg.inpaint` the UNet is an inpainting UNet in the SD-2-inpainting layout: its input is
[noisy image, mask, masked image] (3 + 1 + 3 channels in pixel space), and every training
example gets a mask drawn from the mix in `cfg.masks`: the whole image (so the same model
draws from text alone and serves textual inversion), the object's bounding box grown by a
few pixels, the square around that box, a box of another aspect ratio around it (so the
mask's shape does not tell the class), or a random box. Box masks need the object masks
(`mask_file_name`); without them only full-image and random masks are drawn.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from spurjax import rng as rng_ids
from spurjax import sharding as shd
from spurjax.diffusion import clip_text, loading, sampling, schedulers, tokenizer as tok_lib, train as dtrain
from spurjax.diffusion import unet as unet_lib
from spurjax.errors import SpurjaxError

REQUIRED_COLUMNS = ("file_name", "text")
MASK_COLUMN = "mask_file_name"
MASK_KINDS = ("full", "box", "square", "aspect", "random")
_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior_synth.py"


# ----------------------------------------------------------------------------- the shipped prior


def builtin_prior_path() -> str:
  """The directory of the prior shipped with spurjax (`spurjax/assets/prior`)."""
  return str(Path(__file__).resolve().parents[1] / "assets" / "prior")


def resolve_diffusion_path(path: str, key: str = "diffusion.path") -> str:
  """`"builtin"` -> `builtin_prior_path()`; other paths unchanged. Empty or missing is a SpurjaxError
  naming the config `key`."""
  if not path:
    raise SpurjaxError(f"config {key}: no diffusion model given (a diffusers directory or 'builtin')")
  if path == "builtin":
    path = builtin_prior_path()
    if not os.path.isfile(os.path.join(path, "model_index.json")):
      raise SpurjaxError(f"{path}: the built-in prior is not installed (no model_index.json)")
  elif not os.path.isdir(path):
    raise SpurjaxError(f"config {key}: directory not found: {path}")
  return path


# ----------------------------------------------------------------------------- imagefolder


def _read_rows(root: str) -> tuple[str, str, list[tuple[int, dict]]]:
  """(metadata file, "row" or "line", [(row number, row dict)]) of an imagefolder."""
  if not os.path.isdir(root):
    raise SpurjaxError(f"imagefolder not found: {root}")
  csv_path, jsonl_path = os.path.join(root, "metadata.csv"), os.path.join(root, "metadata.jsonl")
  if os.path.isfile(csv_path):
    meta = csv_path
    with open(csv_path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      cols = reader.fieldnames or []
      _check_columns(meta, cols)
      rows = [(r, row) for r, row in enumerate(reader, start=2)]
  elif os.path.isfile(jsonl_path):
    meta, rows = jsonl_path, []
    with open(jsonl_path, encoding="utf-8") as f:
      for r, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise SpurjaxError(f"{meta}: line {r}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise SpurjaxError(f"{meta}: line {r}: expected a JSON object")
        _check_columns(meta, list(row), where=f"line {r}: ")
        rows.append((r, row))
  else:
    raise SpurjaxError(f"{root}: no metadata.csv or metadata.jsonl (an imagefolder needs one, with columns "
                       f"{', '.join(REQUIRED_COLUMNS)})")
  if not rows:
    raise SpurjaxError(f"{meta}: no rows")
  return meta, ("row" if meta == csv_path else "line"), rows


def read_imagefolder(root: str) -> tuple[list[str], list[str]]:
  """(image paths, captions) of an HF imagefolder with `metadata.csv` or `metadata.jsonl`."""
  meta, unit, rows = _read_rows(root)
  paths, texts = [], []
  for r, row in rows:
    name, text = row.get("file_name"), row.get("text")
    if not isinstance(name, str) or not name.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty 'file_name'")
    if not isinstance(text, str) or not text.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty 'text'")
    path = os.path.join(root, name.strip())
    if not os.path.isfile(path):
      raise SpurjaxError(f"{meta}: {unit} {r}: image not found: {path}")
    paths.append(path)
    texts.append(text.strip())
  return paths, texts


def read_mask_paths(root: str) -> list[str] | None:
  """The object-mask paths of an imagefolder (column `mask_file_name`), or None when it has none."""
  meta, unit, rows = _read_rows(root)
  if not any(MASK_COLUMN in row for _, row in rows):
    return None
  out = []
  for r, row in rows:
    name = row.get(MASK_COLUMN)
    if not isinstance(name, str) or not name.strip():
      raise SpurjaxError(f"{meta}: {unit} {r}: empty '{MASK_COLUMN}'")
    path = os.path.join(root, name.strip())
    if not os.path.isfile(path):
      raise SpurjaxError(f"{meta}: {unit} {r}: mask not found: {path}")
    out.append(path)
  return out


def _check_columns(meta: str, cols: Sequence[str], where: str = "") -> None:
  for c in REQUIRED_COLUMNS:
    if c not in cols:
      raise SpurjaxError(f"{meta}: {where}missing column '{c}' (have: {', '.join(cols) or 'none'})")


def load_images(paths: Sequence[str], size: int) -> np.ndarray:
  """uint8 (N, size, size, 3): RGB, resized (box filter down, bicubic up) to a square."""
  from spurjax.data.images import read_image
  out = np.empty((len(paths), size, size, 3), np.uint8)
  for i, p in enumerate(tqdm(paths, desc="loading images", leave=False, mininterval=2.0,
                             disable=len(paths) < 500)):
    out[i] = resize_image(read_image(p), size)
  return out


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC RGB -> (size, size, 3), box filter when shrinking, bicubic when growing."""
  if img.shape[:2] == (size, size):
    return img
  down = min(img.shape[:2]) >= size
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BOX if down else Image.BICUBIC))


def load_masks(paths: Sequence[str], size: int) -> np.ndarray:
  """bool (N, size, size): object masks box-resized to `size`; a pixel is in if any of its area is."""
  out = np.empty((len(paths), size, size), bool)
  for i, p in enumerate(paths):
    m = np.asarray(Image.open(p).convert("L"))
    if m.shape != (size, size):
      m = np.asarray(Image.fromarray(m).resize((size, size), Image.BOX))
    out[i] = m > 0
  return out


def object_boxes(masks: np.ndarray) -> np.ndarray:
  """int (N, 4) boxes (y0, x0, y1, x1), end-exclusive, of bool (N, H, W) masks; an empty mask gets the image."""
  masks = np.asarray(masks, bool)
  n, h, w = masks.shape
  out = np.tile(np.asarray([0, 0, h, w], np.int64), (n, 1))
  rows, cols = masks.any(2), masks.any(1)
  for i in range(n):
    if rows[i].any():
      ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
      out[i] = ys[0], xs[0], ys[-1] + 1, xs[-1] + 1
  return out


def _fit(lo: int, length: int, size: int) -> tuple[int, int]:
  """An interval of `length` (at most `size`) starting near `lo`, shifted to lie inside [0, size)."""
  length = min(max(int(length), 1), size)
  lo = min(max(int(lo), 0), size - length)
  return lo, lo + length


def grow_box(box, pixels: int, size: int) -> tuple[int, int, int, int]:
  """A box grown by `pixels` on every side, clipped to the image."""
  y0, x0, y1, x1 = (int(v) for v in box)
  return max(0, y0 - pixels), max(0, x0 - pixels), min(size, y1 + pixels), min(size, x1 + pixels)


def square_box(box, size: int) -> tuple[int, int, int, int]:
  """The square with the box's longer side, centred on it and shifted into the image."""
  y0, x0, y1, x1 = (int(v) for v in box)
  side = max(y1 - y0, x1 - x0)
  ya, yb = _fit(y0 - (side - (y1 - y0)) // 2, side, size)
  xa, xb = _fit(x0 - (side - (x1 - x0)) // 2, side, size)
  return ya, xa, yb, xb


def box_mask(box, size: int) -> np.ndarray:
  m = np.zeros((size, size), np.float32)
  y0, x0, y1, x1 = (int(v) for v in box)
  m[y0:y1, x0:x1] = 1.0
  return m


def inference_mask(mask: np.ndarray, kind: str = "square", grow: int = 2) -> np.ndarray:
  """The region to repaint for a bool (H, W) object mask: "object" (the mask itself), "box" (its box
  grown by `grow` px) or "square" (the square around that box, the default), as float32 0/1."""
  mask = np.asarray(mask, bool)
  size = mask.shape[0]
  if mask.shape != (size, size):
    raise SpurjaxError(f"inference_mask: expected a square mask, got shape {mask.shape}")
  if kind == "object":
    return mask.astype(np.float32)
  box = grow_box(object_boxes(mask[None])[0], grow, size)
  if kind == "box":
    return box_mask(box, size)
  if kind == "square":
    return box_mask(square_box(box, size), size)
  raise SpurjaxError(f"mask kind {kind!r} must be 'object', 'box' or 'square'")


def mask_mix(cfg_masks) -> np.ndarray:
  """The probabilities of MASK_KINDS from `cfg.masks` (normalised)."""
  p = np.asarray([float(cfg_masks.get(k, 0.0)) for k in MASK_KINDS], np.float64)
  if (p < 0).any() or p.sum() <= 0:
    raise SpurjaxError(f"config masks: the weights of {', '.join(MASK_KINDS)} must be >= 0, not all 0; got {p}")
  return p / p.sum()


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
      ya, yb = _fit(y0 - int(rng.integers(0, h - (y1 - y0) + 1)), h, size)
      xa, xb = _fit(x0 - int(rng.integers(0, w - (x1 - x0) + 1)), w, size)
      box = (ya, xa, yb, xb)
    out[i] = box_mask(box, size)
  return out


# ----------------------------------------------------------------------------- building a fresh model


def unet_config(cfg) -> dict:
  u = cfg.unet
  n = len(u.block_out_channels)
  return {
      "_class_name": "UNet2DConditionModel",
      "sample_size": int(cfg.resolution),
      "in_channels": 7 if bool(cfg.get("inpaint", False)) else 3,  # [noisy, mask, masked image] or noisy
      "out_channels": 3,
      "block_out_channels": [int(c) for c in u.block_out_channels],
      "layers_per_block": int(u.layers_per_block),
      "down_block_types": list(u.down_block_types),
      "up_block_types": list(u.up_block_types),
      "attention_head_dim": [int(h) for h in u.attention_heads] if len(u.attention_heads) == n else
                            int(u.attention_heads[0]),
      "cross_attention_dim": int(cfg.text.hidden_size),
      "norm_num_groups": int(u.norm_num_groups),
      "use_linear_projection": True,
      "flip_sin_to_cos": True,
      "freq_shift": 0,
      "act_fn": "silu",
      "center_input_sample": False,
      **({"addition_embed_type": "text", "addition_embed_type_num_heads": int(u.text_time_heads)}
         if int(u.get("text_time_heads", 0)) else {}),
  }


def text_config(cfg, vocab_size: int) -> dict:
  t = cfg.text
  return {
      "vocab_size": vocab_size,
      "hidden_size": int(t.hidden_size),
      "intermediate_size": int(t.intermediate_size),
      "num_hidden_layers": int(t.num_hidden_layers),
      "num_attention_heads": int(t.num_attention_heads),
      "max_position_embeddings": int(t.max_length),
      "hidden_act": "quick_gelu",
      "layer_norm_eps": 1e-5,
      "bos_token_id": vocab_size - 2,
      "eos_token_id": vocab_size - 1,
      "pad_token_id": vocab_size - 1,
      "projection_dim": int(t.hidden_size),
  }


def scheduler_config(cfg) -> dict:
  s = cfg.scheduler
  return {
      "_class_name": "DDIMScheduler",
      "_diffusers_version": "0.30.0",
      "num_train_timesteps": int(s.num_train_timesteps),
      "beta_schedule": str(s.beta_schedule),
      "beta_start": float(s.beta_start),
      "beta_end": float(s.beta_end),
      "prediction_type": str(s.prediction_type),
      "clip_sample": bool(s.clip_sample),
      "clip_sample_range": 1.0,
      "set_alpha_to_one": True,
      "steps_offset": 0,
      "timestep_spacing": str(s.timestep_spacing),
  }


def new_pipeline(cfg, workdir: str) -> loading.Pipeline:
  """A randomly initialised pixel-space pipeline for `cfg` (tokenizer files written under `workdir`)."""
  tok_dir = tok_lib.write_clip_tokenizer(os.path.join(workdir, "tokenizer"), vocab_size=int(cfg.text.vocab_size),
                                         model_max_length=int(cfg.text.max_length))
  tokenizer = tok_lib.load_tokenizer(tok_dir)
  ucfg = unet_config(cfg)
  k_unet, k_text = jax.random.split(jax.random.key(int(cfg.seed)))
  unet_params = unet_lib.init_unet_params(ucfg, k_unet, sample_size=int(cfg.resolution))
  # A zero output layer starts training at the target's variance and is the usual choice.
  unet_params = {**unet_params, "conv_out": jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), unet_params["conv_out"])}
  tcfg = text_config(cfg, len(tokenizer))
  text_params = clip_text.init_clip_params(tcfg, k_text)
  return loading.Pipeline(unet=unet_lib.UNet2DConditionModel(ucfg), unet_params=jax.tree.map(np.asarray, unet_params),
                          text_encoder=clip_text.CLIPTextModel(tcfg), text_params=jax.tree.map(np.asarray, text_params),
                          tokenizer=tokenizer, scheduler_config=scheduler_config(cfg))


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
  if inpaint and mask_paths is None and any(probs[MASK_KINDS.index(k)] > 0 for k in ("box", "square", "aspect")):
    raise SpurjaxError(f"{data_dir}: box masks (config masks.box / square / aspect) need an imagefolder column "
                       f"'{MASK_COLUMN}' with the object masks (spurjax data synth writes it)")
  t = cfg.train
  decay = _decay(t)
  object_weight = float(t.get("object_weight", 1.0))
  object_t_max = float(t.get("object_t_max", 1.0))
  if not 0.0 < object_t_max <= 1.0:
    raise SpurjaxError(f"config train.object_t_max={object_t_max} must be in (0, 1]")
  if object_weight != 1.0 and mask_paths is None:
    raise SpurjaxError(f"{data_dir}: config train.object_weight={object_weight} needs an imagefolder column "
                       f"'{MASK_COLUMN}' with the object masks (spurjax data synth writes it)")
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
          "steps": int(t.steps), "grad_accum": accum, "batch_size": bs, "wall_s_this_run": round(wall, 1),
          "steps_this_run": calls[0] // accum, "images_per_s_this_run": round(calls[0] * bs / wall, 2),
          "final_loss": history[-1]["loss"] if history else None, "config": cfg.to_dict()}
  (Path(out) / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
  print(f"prior: wrote {out} (final loss {info['final_loss']})", flush=True)
  return out


# ----------------------------------------------------------------------------- sampling


def sample_images(pipeline, prompts: Sequence[str], *, num_steps: int = 50, guidance_scale: float = 3.0,
                  seed: int = 0, sampler: str = "ddim", mesh=None, batch_size: int = 64) -> np.ndarray:
  """Text-to-image samples (N, H, W, 3) float32 in [0, 1], one per prompt.

  An inpainting UNet draws from text alone with the whole image masked (what it is trained on).
  """
  fns = sampling.pipeline_fns(pipeline)
  cfg = dict(pipeline.unet.config)
  side = int(cfg.get("sample_size") or 32)
  uncond = sampling.empty_context(pipeline) if guidance_scale != 1.0 else None
  sched = schedulers.make_schedule(pipeline.scheduler_config)
  outs = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    ctx = sampling.encode_prompts(pipeline, chunk)
    rng = jax.random.fold_in(jax.random.key(seed), start)
    if pipeline.is_inpaint:
      down = fns.downscale
      blank = np.zeros((len(chunk), side * down, side * down, 3), np.float32)
      imgs = sampling.inpaint_channels(fns.denoise, sched, images=blank, masks=np.ones(blank.shape[:3], np.float32),
                                       context=ctx, uncond_context=uncond, guidance_scale=guidance_scale,
                                       num_steps=num_steps, rng=rng, sampler=sampler, params=fns.params,
                                       encode_fn=fns.encode, decode_fn=fns.decode, mesh=mesh)
    else:
      imgs = sampling.sample(fns.denoise, sched, shape=(len(chunk), side, side, fns.latent_channels), context=ctx,
                             uncond_context=uncond, guidance_scale=guidance_scale, num_steps=num_steps,
                             rng=rng, sampler=sampler, params=fns.params, decode_fn=fns.decode, mesh=mesh)
    outs.append(np.asarray(imgs))
  return np.concatenate(outs)


def inpaint_images(pipeline, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], *, num_steps: int = 50,
                   guidance_scale: float = 3.0, seed: int = 0, sampler: str = "ddim", mesh=None,
                   batch_size: int = 64) -> np.ndarray:
  """Repaints `masks` (N, H, W), 1 = repaint, of float images (N, H, W, 3) in [0, 1] at the model's resolution,
  one prompt per image: through the mask channels for an inpainting UNet, by blended latents otherwise."""
  fns = sampling.pipeline_fns(pipeline)
  uncond = sampling.empty_context(pipeline) if guidance_scale != 1.0 else None
  sched = schedulers.make_schedule(pipeline.scheduler_config)
  run = sampling.inpaint_channels if pipeline.is_inpaint else sampling.inpaint_blended
  outs = []
  for start in range(0, len(prompts), batch_size):
    sl = slice(start, start + batch_size)
    ctx = sampling.encode_prompts(pipeline, list(prompts[sl]))
    out = run(fns.denoise, sched, images=np.asarray(images[sl], np.float32), masks=np.asarray(masks[sl], np.float32),
              context=ctx, uncond_context=uncond, guidance_scale=guidance_scale, num_steps=num_steps,
              rng=jax.random.fold_in(jax.random.key(seed), start), sampler=sampler, params=fns.params,
              encode_fn=fns.encode, decode_fn=fns.decode, mesh=mesh)
    outs.append(np.asarray(out))
  return np.concatenate(outs)


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
