"""Stable-Diffusion-2-shaped model directories and a torchvision ResNet weights file, with random weights.

The configs are the public `config.json` values of stabilityai/stable-diffusion-2-base and
stable-diffusion-2-inpainting; `width` divides every channel width (head counts and depths stay) and
`resolution` sets the pixel size the UNet works at (512 for both models). Weights are drawn per tensor
from the parameter shapes (`jax.eval_shape`, no Flax init) and written one component at a time.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spurjax.diffusion import clip_text, convert, loading, tokenizer as tok_lib, unet as unet_lib, vae as vae_lib
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

STAMP = "dryrun_models.json"   # top level: not part of the directory's identity (stages.directory_digest)
VERSION = 1
WIDTHS = (1, 2, 4, 8, 16, 32, 64)   # 64 / width must stay whole: the head width of every attention

SD2_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
SD2_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD2_TEXT = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1,
    "projection_dim": 512, "torch_dtype": "float32", "vocab_size": 49408,
}
SD2_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}
SD2_PAD_TOKEN = "!"


def check_size(width: int, resolution: int) -> None:
  """One-line errors for a width divisor or a resolution the SD-2 layout cannot take."""
  if width not in WIDTHS:
    raise SpurjaxError(f"dryrun: --width {width} must be one of {', '.join(map(str, WIDTHS))}")
  if resolution < 64 or resolution % 64:
    raise SpurjaxError(f"dryrun: --resolution {resolution} must be a positive multiple of 64")


def _groups(channels) -> int:
  return math.gcd(32, *[int(c) for c in channels])


def unet_config(width: int = 1, resolution: int = 512, inpaint: bool = False) -> dict:
  """SD-2-base's UNet config (SD-2-inpainting's with `inpaint`: 9 input channels), widths / `width`."""
  c = json.loads(json.dumps(SD2_UNET))
  c["block_out_channels"] = [ch // width for ch in c["block_out_channels"]]
  c["cross_attention_dim"] = SD2_TEXT["hidden_size"] // width
  c["norm_num_groups"] = _groups(c["block_out_channels"])
  c["sample_size"] = resolution // 8
  c["in_channels"] = 9 if inpaint else 4
  return c


def vae_config(width: int = 1, resolution: int = 512) -> dict:
  c = json.loads(json.dumps(SD2_VAE))
  c["block_out_channels"] = [ch // width for ch in c["block_out_channels"]]
  c["norm_num_groups"] = _groups(c["block_out_channels"])
  c["sample_size"] = resolution
  return c


def text_config(width: int = 1) -> dict:
  c = dict(SD2_TEXT)
  c["hidden_size"] //= width
  c["intermediate_size"] //= width
  c["projection_dim"] = max(1, c["projection_dim"] // width)
  return c


def sd2_configs(width: int = 1, resolution: int = 512, inpaint: bool = False) -> dict:
  """{component: config} of one SD-2-shaped pipeline."""
  return {"unet": unet_config(width, resolution, inpaint), "vae": vae_config(width, resolution),
          "text_encoder": text_config(width), "scheduler": dict(SD2_SCHEDULER)}


def param_shapes(component: str, config: dict):
  """The Flax param tree of a component as ShapeDtypeStructs (no weights)."""
  return _param_shapes(component, json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _param_shapes(component: str, config_json: str):
  config = json.loads(config_json)
  if component == "unet":
    return unet_lib.unet_param_shapes(config)
  if component == "vae":
    return vae_lib.vae_param_shapes(config)
  if component == "text_encoder":
    return clip_text.clip_param_shapes(config)
  raise SpurjaxError(f"dryrun: no weights for component {component!r}")


def count_params(shapes) -> int:
  return int(sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)))


def _torch_shape(leaf: str, shape) -> tuple:
  """The shape `convert.to_torch` gives a flax leaf (a broadcast view: no memory)."""
  view = np.broadcast_to(np.zeros((), np.float32), tuple(shape))
  return tuple(convert._to_torch_layout(leaf, view).shape)  # pylint: disable=protected-access


def random_tensors(shapes, seed: int, prefix: str = "") -> dict[str, np.ndarray]:
  """A torch-layout state dict of float32 random tensors for a flax param tree of shapes: kernels
  N(0, 1/fan_in), embeddings N(0, 0.02^2), norm scales 1, biases 0."""
  gen = np.random.default_rng(seed)
  out = {}
  for path, ref in traverse_util.flatten_dict(shapes).items():
    leaf, shape = path[-1], _torch_shape(path[-1], ref.shape)
    if leaf == "kernel":
      a = gen.standard_normal(shape, np.float32)
      a *= np.float32(1.0 / np.sqrt(max(1, int(np.prod(shape[1:])))))
    elif leaf == "embedding":
      a = gen.standard_normal(shape, np.float32)
      a *= np.float32(0.02)
    elif leaf == "scale":
      a = np.ones(shape, np.float32)
    else:
      a = np.zeros(shape, np.float32)
    out[convert.torch_key(path, prefix)] = a
  return out


_FILES = {"unet": ("diffusion_pytorch_model.safetensors", ""), "vae": ("diffusion_pytorch_model.safetensors", ""),
          "text_encoder": ("model.safetensors", clip_text.PREFIX)}
_INDEX = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
          "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}


def _stamp(configs: dict, seed: int) -> dict:
  return {"version": VERSION, "seed": int(seed), "configs": configs}


def is_cached(path, configs: dict, seed: int = 0) -> bool:
  """Whether `path` holds a complete directory written from these configs (its stamp is written last)."""
  stamp = Path(path) / STAMP
  try:
    if json.loads(stamp.read_text(encoding="utf-8")) != json.loads(json.dumps(_stamp(configs, seed))):
      return False
  except (OSError, ValueError):
    return False
  return all((Path(path) / c / f).is_file() for c, (f, _) in _FILES.items())


def write_sd2_dir(path, configs: dict, seed: int = 0, log=print) -> Path:
  """Writes a diffusers directory with random weights, one component at a time, unless a complete one
  from the same configs is there. Returns the directory."""
  root = Path(path)
  if is_cached(root, configs, seed):
    log(f"  {root}: reused (same configs)")
    return root
  if root.exists():
    if not (root / STAMP).is_file() and any(root.iterdir()):
      raise SpurjaxError(f"{root}: exists and was not written by spurjax dryrun; choose another --models")
    shutil.rmtree(root)
  root.mkdir(parents=True)
  for n, component in enumerate(("unet", "vae", "text_encoder")):
    start = time.perf_counter()
    config = configs[component]
    shapes = param_shapes(component, config)
    name, prefix = _FILES[component]
    tensors = random_tensors(shapes, seed * 10 + n + (5 if configs["unet"]["in_channels"] != 4 else 0), prefix)
    loading._write_component(root / component, config, tensors, name)  # pylint: disable=protected-access
    size = sum(a.nbytes for a in tensors.values())
    del tensors
    log(f"  {root.name}/{component}: {count_params(shapes) / 1e6:.1f} M parameters, {size / 2**30:.2f} GiB "
        f"({time.perf_counter() - start:.0f} s)")
  tok_lib.write_clip_tokenizer(root / "tokenizer", pad_token=SD2_PAD_TOKEN)
  (root / "scheduler").mkdir(exist_ok=True)
  write_json_atomic(root / "scheduler" / "scheduler_config.json", configs["scheduler"], indent=2, sort_keys=True,
                    newline=True)
  inpaint = loading.is_inpaint_config(configs["unet"])
  index = {"_class_name": "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline",
           "_diffusers_version": "0.10.0.dev0", "feature_extractor": [None, None], "requires_safety_checker": False,
           "safety_checker": [None, None], "scheduler": ["diffusers", configs["scheduler"]["_class_name"]], **_INDEX}
  write_json_atomic(root / "model_index.json", index, indent=2, sort_keys=True, newline=True)
  write_json_atomic(root / STAMP, _stamp(configs, seed), indent=2, sort_keys=True, newline=True)
  return root


def resnet_tensors(model_name: str, num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
  """A torchvision state dict of `model_name` (resnet18 / resnet50) with random weights."""
  from spurjax.models import get_model
  from spurjax.models import torchvision_io
  model = get_model(model_name, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  gen = np.random.default_rng(seed)
  flat = {}
  for path, ref in traverse_util.flatten_dict(dict(shapes)).items():
    shape, leaf = tuple(ref.shape), path[-1]
    if leaf == "kernel":
      flat[path] = gen.standard_normal(shape, np.float32) / np.float32(np.sqrt(max(1, int(np.prod(shape[:-1])))))
    elif leaf in ("scale", "var"):
      flat[path] = np.ones(shape, np.float32)
    else:
      flat[path] = np.zeros(shape, np.float32)
  return torchvision_io.variables_to_torchvision(traverse_util.unflatten_dict(flat), model_name)


def write_resnet(path, model_name: str, seed: int = 0, log=print) -> Path:
  """A random torchvision-format weights file (.safetensors, ImageNet's 1000-class head), reused when there."""
  from spurjax.models import torchvision_io
  out = Path(path)
  if out.is_file():
    log(f"  {out}: reused")
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp.safetensors")
  torchvision_io.save_safetensors(resnet_tensors(model_name, seed=seed), tmp)
  os.replace(tmp, out)
  log(f"  {out}: random torchvision {model_name}")
  return out


def write_models(models_dir, width: int = 1, resolution: int = 512, model_name: str = "resnet50",
                 seed: int = 0, log=print) -> dict[str, str]:
  """{"base", "inpaint", "resnet"}: the paths of the three written (or reused) models under `models_dir`."""
  check_size(width, resolution)
  root = Path(models_dir)
  tag = f"w{width}-r{resolution}"
  log(f"models in {root} (widths / {width}, {resolution} px)")
  base = write_sd2_dir(root / f"sd2-base-{tag}", sd2_configs(width, resolution), seed, log)
  inpaint = write_sd2_dir(root / f"sd2-inpainting-{tag}", sd2_configs(width, resolution, inpaint=True), seed, log)
  resnet = write_resnet(root / f"{model_name}-torchvision.safetensors", model_name, seed, log)
  return {"base": str(base), "inpaint": str(inpaint), "resnet": str(resnet)}
