"""Flax CLIP text encoder matching transformers' CLIPTextModel (the SD text encoder).

Param names mirror transformers: `embeddings.token_embedding`, `encoder.layers_i.self_attn.q_proj`,
`final_layer_norm`, ... Checkpoints are read with or without the `text_model.` key prefix
and written with it (the layout of Stable Diffusion checkpoints).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spurjax.diffusion import convert
from spurjax.diffusion.vae import random_params
from spurjax.errors import SpurjaxError

PREFIX = "text_model."
_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
# Tensors some checkpoints carry that the text encoder does not use.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "text_projection.weight", "logit_scale")


def clip_config(config: Mapping[str, Any], what: str = "text_encoder/config.json") -> dict:
  """Validates a transformers CLIPTextConfig dict and fills in its defaults."""
  if not isinstance(config, Mapping):
    raise SpurjaxError(f"{what}: expected a JSON object, got {type(config).__name__}")
  cfg = {**_DEFAULTS, **dict(config)}
  if "text_config" in config and "hidden_size" not in config:
    raise SpurjaxError(f"{what}: this is a full CLIPModel config; a CLIPTextModel config is needed")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "max_position_embeddings"):
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise SpurjaxError(f"{what}: {key}={v!r} must be a positive int")
  if cfg["hidden_size"] % cfg["num_attention_heads"]:
    raise SpurjaxError(f"{what}: num_attention_heads={cfg['num_attention_heads']} does not divide "
                       f"hidden_size={cfg['hidden_size']}")
  if cfg["hidden_act"] not in _ACTS:
    raise SpurjaxError(f"{what}: hidden_act={cfg['hidden_act']!r} is not supported (one of {sorted(_ACTS)})")
  if not isinstance(cfg["layer_norm_eps"], (int, float)) or cfg["layer_norm_eps"] <= 0:
    raise SpurjaxError(f"{what}: layer_norm_eps={cfg['layer_norm_eps']!r} must be a positive number")
  return cfg


def _dense(features: int, name: str, dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def _layer_norm(eps: float, name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


class Attention(nn.Module):
  hidden: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    b, l, _ = x.shape
    dh = self.hidden // self.heads
    split = lambda t: t.reshape(b, l, self.heads, dh)
    q = split(_dense(self.hidden, "q_proj", self.dtype)(x))
    k = split(_dense(self.hidden, "k_proj", self.dtype)(x))
    v = split(_dense(self.hidden, "v_proj", self.dtype)(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (dh ** -0.5) + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, self.hidden)
    return _dense(self.hidden, "out_proj", self.dtype)(out)


class MLP(nn.Module):
  hidden: int
  intermediate: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _ACTS[self.act](_dense(self.intermediate, "fc1", self.dtype)(x))
    return _dense(self.hidden, "fc2", self.dtype)(x)


class EncoderLayer(nn.Module):
  """Pre-LN transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  config: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    eps = cfg["layer_norm_eps"]
    x = x + Attention(cfg["hidden_size"], cfg["num_attention_heads"], self.dtype, name="self_attn")(
        _layer_norm(eps, "layer_norm1", self.dtype)(x), bias)
    return x + MLP(cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_act"], self.dtype, name="mlp")(
        _layer_norm(eps, "layer_norm2", self.dtype)(x))


class Table(nn.Module):
  """An embedding table (param `embedding`). Its row count is taken from the params when they
  exist, so a table grown by `resize_token_embeddings` works with the same module."""
  rows: int
  features: int

  @nn.compact
  def __call__(self):
    if self.has_variable("params", "embedding"):
      return self.get_variable("params", "embedding")
    return self.param("embedding", nn.initializers.normal(0.02), (self.rows, self.features), jnp.float32)


class Embeddings(nn.Module):
  config: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    cfg = self.config
    tok = Table(cfg["vocab_size"], cfg["hidden_size"], name="token_embedding")()
    pos = Table(cfg["max_position_embeddings"], cfg["hidden_size"], name="position_embedding")()
    x = jnp.take(tok, input_ids, axis=0) + pos[None, :input_ids.shape[1]]
    return x.astype(self.dtype)


class Encoder(nn.Module):
  config: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    states = [x]
    for i in range(self.config["num_hidden_layers"]):
      x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, bias)
      states.append(x)
    return states


class CLIPTextModel(nn.Module):
  """CLIP text transformer. `config` is the content of `text_encoder/config.json`.

  `apply(params, input_ids)` -> last_hidden_state (B, L, D), float32, after final_layer_norm.
  With `output_hidden_states=True` it returns (last_hidden_state, hidden_states) where
  hidden_states has num_hidden_layers + 1 entries (embeddings, then each layer's output,
  without the final norm), as in transformers.
  """
  config: dict
  dtype: Any = jnp.float32

  def __hash__(self):
    return hash((type(self).__name__, json.dumps(self.config, sort_keys=True, default=str), str(self.dtype)))

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
    cfg = clip_config(self.config)
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise SpurjaxError(f"text encoder: input_ids must be (batch, length), got shape {input_ids.shape}")
    length = input_ids.shape[1]
    if length > cfg["max_position_embeddings"]:
      raise SpurjaxError(f"text encoder: sequence length {length} exceeds max_position_embeddings="
                         f"{cfg['max_position_embeddings']}")
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      allowed = allowed & (jnp.asarray(attention_mask) > 0)[:, None, None, :]
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    x = Embeddings(cfg, self.dtype, name="embeddings")(input_ids)
    states = Encoder(cfg, self.dtype, name="encoder")(x, bias)
    last = _layer_norm(cfg["layer_norm_eps"], "final_layer_norm", self.dtype)(states[-1]).astype(jnp.float32)
    if output_hidden_states:
      return last, tuple(s.astype(jnp.float32) for s in states)
    return last


def _dummy_ids() -> jnp.ndarray:
  return jnp.zeros((1, 1), jnp.int32)


def init_clip_params(config: Mapping[str, Any], rng: jax.Array) -> dict:
  """Random float32 params for `CLIPTextModel(config)` (see `vae.random_params`)."""
  return random_params(clip_param_shapes(config), rng)


def clip_param_shapes(config: Mapping[str, Any]) -> dict:
  cfg = clip_config(config)
  return jax.eval_shape(lambda: CLIPTextModel(cfg).init(jax.random.key(0), _dummy_ids()))["params"]


def clip_from_transformers(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
                           what: str = "text_encoder/model.safetensors") -> dict:
  """Flax params from a transformers CLIPTextModel state dict (with or without `text_model.`).

  Raises SpurjaxError naming a missing, mis-shaped or unexpected tensor.
  """
  template = clip_param_shapes(config)
  prefix = PREFIX if any(k.startswith(PREFIX) for k in tensors) else ""
  params = convert.from_torch(tensors, template, prefix=prefix, what=what)
  used = {convert.torch_key(p, prefix) for p in traverse_util.flatten_dict(template)}
  extra = sorted(k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES))
  if extra:
    raise SpurjaxError(f"{what}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all); "
                       "does config.json match the weights?")
  return params


def clip_to_transformers(params, config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """A transformers CLIPTextModel state dict (keys prefixed `text_model.`, float32 numpy)."""
  del config  # the layout is fully determined by the param names
  return convert.to_torch(params, prefix=PREFIX)


def vocab_size_of(params) -> int:
  """Rows of the token embedding table."""
  return int(params["embeddings"]["token_embedding"]["embedding"].shape[0])


def resize_token_embeddings(params, new_vocab_size: int, init_rows: Mapping[int, int] | None = None):
  """Params with the token embedding grown to `new_vocab_size` rows (a new tree; the input is untouched).

  New rows are copies of the row of `init_rows[new_id]` when given (e.g. the initialiser token
  of a textual-inversion placeholder), otherwise the mean of the existing rows.
  """
  table = params["embeddings"]["token_embedding"]["embedding"]
  old = int(table.shape[0])
  if new_vocab_size < old:
    raise SpurjaxError(f"resize_token_embeddings: new_vocab_size={new_vocab_size} is smaller than the current {old}")
  init_rows = dict(init_rows or {})
  for new_id, src in init_rows.items():
    if not old <= new_id < new_vocab_size:
      raise SpurjaxError(f"resize_token_embeddings: init_rows key {new_id} is not a new token id "
                         f"(new ids are {old}..{new_vocab_size - 1})")
    if not 0 <= src < old:
      raise SpurjaxError(f"resize_token_embeddings: init_rows[{new_id}]={src} is not an existing token id (< {old})")
  table = np.asarray(table)
  extra = np.repeat(table.mean(axis=0, keepdims=True), new_vocab_size - old, axis=0)
  for new_id, src in init_rows.items():
    extra[new_id - old] = table[src]
  grown = np.concatenate([table, extra.astype(table.dtype)], axis=0)
  emb = {**params["embeddings"], "token_embedding": {"embedding": jnp.asarray(grown)}}
  return {**params, "embeddings": emb}
