"""Reads and writes Stable Diffusion pipelines in the diffusers directory layout.

  path/model_index.json
  path/unet/config.json + diffusion_pytorch_model.safetensors   (or a sharded *.safetensors.index.json)
  path/vae/...                                                  (optional: pixel-space models have none)
  path/text_encoder/config.json + model.safetensors
  path/tokenizer/                                               (transformers CLIPTokenizer files)
  path/scheduler/scheduler_config.json

Weights are read and written with `spurjax.safetensors_io` (no torch), into float32 flax params;
`dtype` only sets the activation dtype of the modules. JSON files are written atomically.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import safetensors_io
from spurjax.diffusion import clip_text, tokenizer as tok_lib, vae as vae_lib
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
_DIFFUSERS_VERSION = "0.30.0"
_CLASSES = {
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "vae": ("diffusers", ("AutoencoderKL",)),
    "text_encoder": ("transformers", ("CLIPTextModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
  """Modules (flax, holding their config dicts) and float32 params of a text-to-image pipeline.

  Components not loaded are None; `vae`/`vae_params` are None for pixel-space models.
  """
  unet: Any = None
  unet_params: Any = None
  vae: Any = None
  vae_params: Any = None
  text_encoder: Any = None
  text_params: Any = None
  tokenizer: Any = None
  scheduler_config: dict | None = None
  path: str | None = None

  @property
  def is_inpaint(self) -> bool:
    """True for an inpainting UNet: [latents, mask, masked-image latents], 2C + 1 input channels
    (9 for SD-2-inpainting, 7 for a pixel-space RGB model)."""
    return self.unet is not None and is_inpaint_config(_config_of(self.unet))

  @property
  def vae_scale_factor(self) -> int:
    """Pixels per latent along each side (1 without a VAE)."""
    return 1 if self.vae is None else vae_lib.downscale_factor(_config_of(self.vae))

  @property
  def latent_scale(self) -> float:
    """The VAE's scaling_factor (latents fed to the UNet are mean * latent_scale); 1.0 without a VAE."""
    return 1.0 if self.vae is None else float(vae_lib.vae_config(_config_of(self.vae))["scaling_factor"])


def is_inpaint_config(unet_config: Mapping) -> bool:
  """Whether a UNet config takes [sample, mask, masked sample]: in_channels == 2 * out_channels + 1."""
  return int(unet_config.get("in_channels", 4)) == 2 * int(unet_config.get("out_channels", 4)) + 1


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict:
  """A JSON object from `path`, or SpurjaxError naming the file."""
  path = Path(path)
  if not path.is_file():
    raise SpurjaxError(f"{path}: file not found")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SpurjaxError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(data, dict):
    raise SpurjaxError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


def read_weights(folder: Path, variant: str | None = None) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of a component folder (single or sharded safetensors) and the file name to cite."""
  folder = Path(folder)
  suffix = f".{variant}.safetensors" if variant else ".safetensors"
  for stem in _WEIGHT_STEMS:
    single = folder / f"{stem}{suffix}"
    if single.is_file():
      return safetensors_io.read(single), str(single)
    index = folder / f"{stem}{suffix}.index.json"
    if index.is_file():
      return _read_sharded(index), str(index)
  others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".safetensors"))
  hint = f" (found {', '.join(others)}; only safetensors named " \
         f"{' or '.join(s + suffix for s in _WEIGHT_STEMS)} are read)" if others else ""
  raise SpurjaxError(f"{folder}: no safetensors weights{hint}")


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
  weight_map = read_json(index).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise SpurjaxError(f"{index}: missing or empty 'weight_map'")
  tensors: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    if not isinstance(shard, str) or Path(shard).name != shard:
      raise SpurjaxError(f"{index}: invalid shard file name {shard!r}")
    tensors.update(safetensors_io.read(index.parent / shard))
  missing = [k for k, shard in weight_map.items() if k not in tensors]
  if missing:
    raise SpurjaxError(f"{index}: tensor '{missing[0]}' listed in weight_map is not in {weight_map[missing[0]]}")
  return tensors


def _owned(params):
  """Params as C-contiguous arrays that own their memory (not views of the weight files)."""
  def own(a):
    a = np.asarray(a)
    return a if a.flags.owndata and a.flags.c_contiguous else np.array(a, order="C", copy=True)
  return jax.tree_util.tree_map(own, params)


def _present(entry) -> bool:
  return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def _check_class(index_path: Path, name: str, entry) -> None:
  if name not in _CLASSES or not _present(entry):
    return
  _, allowed = _CLASSES[name]
  if entry[1] not in allowed:
    raise SpurjaxError(f"{index_path}: component '{name}' has class {entry[1]!r}; supported: {', '.join(allowed)}")


def _component_dir(root: Path, name: str) -> Path:
  folder = root / name
  if not folder.is_dir():
    raise SpurjaxError(f"{folder}: component folder '{name}' not found")
  return folder


def _wanted(components: Iterable[str] | None) -> tuple[str, ...]:
  if components is None:
    return COMPONENTS
  if isinstance(components, str):
    components = [components]
  wanted = tuple(components)
  bad = [c for c in wanted if c not in COMPONENTS]
  if bad:
    raise SpurjaxError(f"load_pipeline: unknown component {bad[0]!r} (known: {', '.join(COMPONENTS)})")
  return wanted


def load_unet(folder: Path, dtype=jnp.float32, variant: str | None = None):
  """(module, params) of a diffusers UNet2DConditionModel folder."""
  from spurjax.diffusion import unet as unet_lib  # the UNet lives in its own module
  config = read_json(Path(folder) / "config.json")
  tensors, what = read_weights(folder, variant)
  params = _owned(unet_lib.unet_from_diffusers(tensors, config, what))
  return unet_lib.UNet2DConditionModel(config, dtype), params


def load_vae(folder: Path, dtype=jnp.float32, variant: str | None = None):
  """(module, params) of a diffusers AutoencoderKL folder."""
  config = vae_lib.vae_config(read_json(Path(folder) / "config.json"), what=str(Path(folder) / "config.json"))
  tensors, what = read_weights(folder, variant)
  params = _owned(vae_lib.vae_from_diffusers(tensors, config, what))
  return vae_lib.AutoencoderKL(config, dtype), params


def load_text_encoder(folder: Path, dtype=jnp.float32, variant: str | None = None):
  """(module, params) of a transformers CLIPTextModel folder."""
  config = clip_text.clip_config(read_json(Path(folder) / "config.json"), what=str(Path(folder) / "config.json"))
  tensors, what = read_weights(folder, variant)
  params = _owned(clip_text.clip_from_transformers(tensors, config, what))
  return clip_text.CLIPTextModel(config, dtype), params


def load_pipeline(path, dtype=jnp.float32, components: Iterable[str] | None = None,
                  variant: str | None = None) -> Pipeline:
  """Loads a diffusers pipeline directory.

  Args:
    path: directory holding model_index.json.
    dtype: activation dtype of the flax modules (params stay float32).
    components: subset of COMPONENTS to load (default all); others are None.
    variant: weight file variant, e.g. "fp16" for diffusion_pytorch_model.fp16.safetensors.
  Raises:
    SpurjaxError naming the missing/invalid directory, file, tensor or config value.
  """
  root = Path(path)
  if not root.is_dir():
    raise SpurjaxError(f"{root}: pipeline directory not found")
  index_path = root / "model_index.json"
  if not index_path.is_file():
    raise SpurjaxError(f"{index_path}: model_index.json not found (not a diffusers pipeline directory)")
  index = read_json(index_path)
  wanted = _wanted(components)
  parts: dict[str, Any] = {"path": str(root)}
  for name in wanted:
    entry = index.get(name)
    _check_class(index_path, name, entry)
    if not _present(entry):
      if name == "vae":
        continue  # pixel-space model
      raise SpurjaxError(f"{index_path}: no '{name}' component listed")
    folder = _component_dir(root, name)
    if name == "unet":
      parts["unet"], parts["unet_params"] = load_unet(folder, dtype, variant)
    elif name == "vae":
      parts["vae"], parts["vae_params"] = load_vae(folder, dtype, variant)
    elif name == "text_encoder":
      parts["text_encoder"], parts["text_params"] = load_text_encoder(folder, dtype, variant)
    elif name == "tokenizer":
      parts["tokenizer"] = tok_lib.load_tokenizer(folder)
    elif name == "scheduler":
      parts["scheduler_config"] = read_json(folder / "scheduler_config.json")
  pipe = Pipeline(**parts)
  _check_vocab(pipe, str(root))
  return pipe


def _check_vocab(pipe: Pipeline, where: str) -> None:
  if pipe.tokenizer is None or pipe.text_params is None:
    return
  rows = clip_text.vocab_size_of(pipe.text_params)
  if len(pipe.tokenizer) > rows:
    raise SpurjaxError(f"{where}: the tokenizer has {len(pipe.tokenizer)} tokens but the text encoder embeds "
                       f"only {rows}; grow it with resize_token_embeddings")


# ----------------------------------------------------------------------------- writing


def _config_of(module_or_config) -> dict:
  if isinstance(module_or_config, Mapping):
    return dict(module_or_config)
  config = getattr(module_or_config, "config", None)
  if not isinstance(config, Mapping):
    raise SpurjaxError(f"save_pipeline: cannot find the config of {type(module_or_config).__name__}")
  return dict(config)


_JSON_STYLE = {"indent": 2, "sort_keys": True, "newline": True}  # the layout diffusers writes


def _parts(pipeline_or_parts) -> dict[str, Any]:
  fields = [f.name for f in dataclasses.fields(Pipeline)]
  if isinstance(pipeline_or_parts, Pipeline):
    return {f: getattr(pipeline_or_parts, f) for f in fields}
  if isinstance(pipeline_or_parts, Mapping):
    bad = [k for k in pipeline_or_parts if k not in fields]
    if bad:
      raise SpurjaxError(f"save_pipeline: unknown part {bad[0]!r} (known: {', '.join(fields)})")
    return {f: pipeline_or_parts.get(f) for f in fields}
  raise SpurjaxError(f"save_pipeline: expected a Pipeline or a dict of its parts, got {type(pipeline_or_parts).__name__}")


def save_pipeline(pipeline_or_parts, path) -> Path:
  """Writes a Pipeline (or a dict with the same field names) as a diffusers directory.

  Only components that are present are written (a module or config dict plus params; the
  tokenizer; the scheduler config); the others are listed as null in model_index.json.
  The text encoder's vocab_size is taken from its params, so grown embeddings are saved
  consistently. Returns the directory.
  """
  parts = _parts(pipeline_or_parts)
  root = Path(path)
  if root.exists() and not root.is_dir():
    raise SpurjaxError(f"{root}: exists and is not a directory")
  for module_key, params_key in (("unet", "unet_params"), ("vae", "vae_params"), ("text_encoder", "text_params")):
    if (parts[module_key] is None) != (parts[params_key] is None):
      raise SpurjaxError(f"save_pipeline: '{module_key}' and '{params_key}' must be given together")
  _check_vocab(Pipeline(**parts), "save_pipeline")
  root.mkdir(parents=True, exist_ok=True)
  index: dict[str, Any] = {
      "_diffusers_version": _DIFFUSERS_VERSION,
      "feature_extractor": [None, None],
      "image_encoder": [None, None],
      "requires_safety_checker": False,
      "safety_checker": [None, None],
  }
  inpaint = False
  if parts["unet"] is not None:
    from spurjax.diffusion import unet as unet_lib
    config = _config_of(parts["unet"])
    inpaint = is_inpaint_config(config)
    tensors = unet_lib.unet_to_diffusers(parts["unet_params"], config)
    _write_component(root / "unet", {**config, "_class_name": "UNet2DConditionModel",
                                      "_diffusers_version": config.get("_diffusers_version", _DIFFUSERS_VERSION)},
                     tensors, "diffusion_pytorch_model.safetensors")
  index["unet"] = ["diffusers", "UNet2DConditionModel"] if parts["unet"] is not None else [None, None]
  if parts["vae"] is not None:
    config = _config_of(parts["vae"])
    tensors = vae_lib.vae_to_diffusers(parts["vae_params"], config)
    _write_component(root / "vae", {**config, "_class_name": "AutoencoderKL",
                                     "_diffusers_version": config.get("_diffusers_version", _DIFFUSERS_VERSION)},
                     tensors, "diffusion_pytorch_model.safetensors")
  index["vae"] = ["diffusers", "AutoencoderKL"] if parts["vae"] is not None else [None, None]
  if parts["text_encoder"] is not None:
    config = _config_of(parts["text_encoder"])
    config = {**config, "vocab_size": clip_text.vocab_size_of(parts["text_params"]),
              "architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}
    tensors = clip_text.clip_to_transformers(parts["text_params"], config)
    _write_component(root / "text_encoder", config, tensors, "model.safetensors")
  index["text_encoder"] = ["transformers", "CLIPTextModel"] if parts["text_encoder"] is not None else [None, None]
  if parts["tokenizer"] is not None:
    (root / "tokenizer").mkdir(exist_ok=True)
    parts["tokenizer"].save_pretrained(str(root / "tokenizer"))
  index["tokenizer"] = ["transformers", "CLIPTokenizer"] if parts["tokenizer"] is not None else [None, None]
  if parts["scheduler_config"] is not None:
    sched = dict(parts["scheduler_config"])
    (root / "scheduler").mkdir(exist_ok=True)
    write_json_atomic(root / "scheduler" / "scheduler_config.json", sched, **_JSON_STYLE)
    index["scheduler"] = ["diffusers", sched.get("_class_name", "DDIMScheduler")]
  else:
    index["scheduler"] = [None, None]
  index["_class_name"] = "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline"
  write_json_atomic(root / "model_index.json", index, **_JSON_STYLE)
  return root


def _write_component(folder: Path, config: Mapping, tensors: Mapping[str, np.ndarray], weights_name: str) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for stale in folder.glob("*.safetensors*"):  # weights (possibly sharded) of an earlier save
    stale.unlink()
  write_json_atomic(folder / "config.json", dict(config), **_JSON_STYLE)
  safetensors_io.write(tensors, folder / weights_name, metadata={"format": "pt"})
