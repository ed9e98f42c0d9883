"""A fresh, randomly initialised prior: its diffusers configs (pixel-space UNet, tiny CLIP text
encoder, DDIM scheduler) from a `configs/prior_synth.py`-style config, and the pipeline built from them."""
from __future__ import annotations

import os

import jax
import numpy as np

from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib
from spurjax.diffusion import unet as unet_lib


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
