"""Small text-to-image priors trained from scratch: `spurjax prior train`, and the shipped prior.

  spurjax prior train --data DIR --out PRIOR_DIR [--config configs/prior_synth.py[:tiny]]
                      [--workdir W] [--config.key=value ...]

`DIR` is an imagefolder (`metadata.csv` or `metadata.jsonl` with columns `file_name` and
`text`; images relative to `DIR`). The result is a diffusers-format directory (pixel-space
UNet, tiny CLIP text encoder with a truncated CLIP BPE vocabulary, DDIM scheduler) that
`loading.load_pipeline` reads like Stable Diffusion 2. Training runs through the shared
loop in `spurjax.diffusion.train` (checkpoints and auto-resume in `--workdir`).
"""
from __future__ import annotations

import argparse
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
_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior_synth.py"


# ----------------------------------------------------------------------------- the shipped prior


def builtin_prior_path() -> str:
  """The directory of the prior shipped with spurjax (`spurjax/assets/prior`)."""
  return str(Path(__file__).resolve().parents[1] / "assets" / "prior")


def resolve_diffusion_path(path: str) -> str:
  """`"builtin"` -> `builtin_prior_path()`; other paths unchanged. Empty or missing is a SpurjaxError."""
  if not path:
    raise SpurjaxError("config diffusion.path: no diffusion model given (a diffusers directory or 'builtin')")
  if path == "builtin":
    path = builtin_prior_path()
    if not os.path.isfile(os.path.join(path, "model_index.json")):
      raise SpurjaxError(f"{path}: the built-in prior is not installed (no model_index.json)")
  elif not os.path.isdir(path):
    raise SpurjaxError(f"config diffusion.path: directory not found: {path}")
  return path


# ----------------------------------------------------------------------------- imagefolder


def read_imagefolder(root: str) -> tuple[list[str], list[str]]:
  """(image paths, captions) of an HF imagefolder with `metadata.csv` or `metadata.jsonl`."""
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
  unit = "row" if meta == csv_path else "line"
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


# ----------------------------------------------------------------------------- building a fresh model


def unet_config(cfg) -> dict:
  u = cfg.unet
  n = len(u.block_out_channels)
  return {
      "_class_name": "UNet2DConditionModel",
      "sample_size": int(cfg.resolution),
      "in_channels": 3,
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


def train_prior(cfg, data_dir: str, out_dir: str, workdir: str | None = None) -> Path:
  """Trains a prior on an imagefolder and writes it as a diffusers directory; returns `out_dir`."""
  workdir = workdir or out_dir.rstrip("/\\") + ".work"
  paths, texts = read_imagefolder(data_dir)   # every input is checked before anything is written
  t = cfg.train
  mesh = shd.make_mesh()
  bs = int(t.batch_size)
  if bs % mesh.devices.size:
    raise SpurjaxError(f"config train.batch_size={bs} is not divisible by the {mesh.devices.size} devices")
  res = int(cfg.resolution)
  images = load_images(paths, res)
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
                      grad_accum=accum, clip_norm=float(t.clip_norm), warmup_steps=int(t.warmup_steps))
  ema_decay = float(t.ema_decay)
  state = dtrain.init_state(params, paths_t, tx, ema=ema_decay > 0)
  step_fn = dtrain.make_train_step(model, tx, paths_t, mesh, cond_drop=float(t.cond_drop), uncond_ids=uncond_ids,
                                   ema_decay=ema_decay, grad_accum=accum)
  seed, flip = int(cfg.seed), bool(t.flip)

  def batch_fn(i: int) -> dict:
    idx = dtrain.sample_batch_indices(len(images), bs, seed, i)
    px = images[idx]
    if flip:
      f = np.random.default_rng([seed, rng_ids.PRIOR_FLIP, i]).random(bs) < 0.5
      px = np.where(f[:, None, None, None], px[:, :, ::-1], px)
    return {"pixels": px, "ids": ids[idx]}

  steps = int(t.steps) * accum
  print(f"prior: {len(images)} images at {res} px, UNet {unet_lib.count_params(params['unet']) / 1e6:.2f} M params, "
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
  info = {"data": os.path.abspath(data_dir), "images": len(images), "steps": int(t.steps), "grad_accum": accum,
          "batch_size": bs, "wall_s_this_run": round(time.time() - t0, 1),
          "final_loss": history[-1]["loss"] if history else None, "config": cfg.to_dict()}
  (Path(out) / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
  print(f"prior: wrote {out} (final loss {info['final_loss']})", flush=True)
  return out


# ----------------------------------------------------------------------------- sampling


def sample_images(pipeline, prompts: Sequence[str], *, num_steps: int = 50, guidance_scale: float = 3.0,
                  seed: int = 0, sampler: str = "ddim", mesh=None, batch_size: int = 64) -> np.ndarray:
  """Text-to-image samples (N, H, W, 3) float32 in [0, 1], one per prompt."""
  fns = sampling.pipeline_fns(pipeline)
  cfg = dict(pipeline.unet.config)
  side = int(cfg.get("sample_size") or 32)
  uncond = sampling.empty_context(pipeline) if guidance_scale != 1.0 else None
  outs = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    ctx = sampling.encode_prompts(pipeline, chunk)
    imgs = sampling.sample(fns.denoise, schedulers.make_schedule(pipeline.scheduler_config),
                           shape=(len(chunk), side, side, fns.latent_channels), context=ctx,
                           uncond_context=uncond, guidance_scale=guidance_scale, num_steps=num_steps,
                           rng=jax.random.fold_in(jax.random.key(seed), start), sampler=sampler,
                           params=fns.params, decode_fn=fns.decode, mesh=mesh)
    outs.append(np.asarray(imgs))
  return np.concatenate(outs)


# ----------------------------------------------------------------------------- CLI


def _load_cfg(spec: str | None, overrides: list[str]):
  from spurjax.config_util import apply_overrides, load_config
  spec = spec or str(_DEFAULT_CONFIG)
  return apply_overrides(load_config(spec), overrides)


def main(argv: Sequence[str] | None = None) -> int:
  """`spurjax prior train ...` (argv starts after `prior`)."""
  argv = list(argv or [])
  if not argv or argv[0] != "train":
    raise SpurjaxError("spurjax prior: expected 'train' (spurjax prior train --data DIR --out PRIOR_DIR)")
  p = argparse.ArgumentParser(prog="spurjax prior train")
  p.add_argument("--data", required=True, help="imagefolder with metadata.csv/.jsonl (file_name, text)")
  p.add_argument("--out", required=True, help="output diffusers directory")
  p.add_argument("--config", default=None, help=f"config file[:arg] (default {_DEFAULT_CONFIG.name})")
  p.add_argument("--workdir", default=None, help="checkpoints and logs (default OUT.work); reruns resume")
  args, rest = p.parse_known_args(argv[1:])
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    raise SpurjaxError(f"unknown argument(s): {' '.join(bad)}")
  cfg = _load_cfg(args.config, rest)
  train_prior(cfg, args.data, args.out, args.workdir)
  return 0
