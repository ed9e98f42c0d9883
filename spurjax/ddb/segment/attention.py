"""Language-guided masks (in place of the paper's LangSAM): the image is noised to a few
timesteps, the frozen diffusion UNet runs on it with the prompt "a photo of a {noun}", and the
cross-attention probabilities toward the noun's token(s) are averaged over heads, layers (each
resized to the latent grid) and timesteps, upsampled and normalised to [0, 1]. One jitted program
per batch shape, sharded over the mesh.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spurjax import sharding
from spurjax.data.resize import resize_images
from spurjax.ddb.images import diffusion_size, to_float_images
from spurjax.ddb.segment.masks import normalise_maps
from spurjax.diffusion import pipeline_sampling, schedulers
from spurjax.errors import SpurjaxError


def noun_token_weights(tokenizer, prompts: Sequence[str], nouns: Sequence[str],
                       max_length: int | None = None) -> np.ndarray:
  """(B, L) float32: 1 / n at the n token positions of `nouns[b]` inside `prompts[b]` (its last occurrence)."""
  from spurjax.diffusion import tokenizer as tok_lib
  ids = tok_lib.encode(tokenizer, list(prompts), max_length)
  out = np.zeros(ids.shape, np.float32)
  for b, (prompt, noun) in enumerate(zip(prompts, nouns)):
    sub = list(tokenizer(noun, add_special_tokens=False)["input_ids"])
    row = list(ids[b])
    hits = [s for s in range(len(row) - len(sub) + 1) if sub and row[s:s + len(sub)] == sub]
    if not hits:
      raise SpurjaxError(f"segment: noun {noun!r} is not found in the tokenised prompt {prompt!r}")
    s = hits[-1]
    out[b, s:s + len(sub)] = 1.0 / len(sub)
  return out


def _layer_grid(q: int, h: int, w: int) -> tuple[int, int]:
  """The (h', w') of an attention layer with q queries on a latent grid of h x w (halving, rounding up)."""
  while h * w > q:
    h, w = -(-h // 2), -(-w // 2)
  if h * w != q:
    raise SpurjaxError(f"segment: cannot place {q} attention queries on a {h}x{w} latent grid")
  return h, w


@dataclasses.dataclass(frozen=True, eq=False)
class _AttentionProgram:
  """The frozen pieces of the attention-map computation of one pipeline; equal (and hashing
  alike) when their values are, so equal programs share one compiled call."""
  unet: nn.Module  # with capture_cross_attention=True
  encode: object   # (params, images in [-1, 1]) -> scaled latents, or None (pixel space)
  sched: schedulers.Schedule
  timesteps: tuple[int, ...]
  in_channels: int
  latent_channels: int

  def _key(self):
    unet = (json.dumps(dict(self.unet.config), sort_keys=True, default=str), str(self.unet.dtype),
            self.unet.attention_implementation)
    return (unet, self.encode, self.sched, self.timesteps, self.in_channels, self.latent_channels)

  def __eq__(self, other):
    return isinstance(other, _AttentionProgram) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __call__(self, params, rng, images, context, weights, index):
    x = images * 2.0 - 1.0
    z0 = x if self.encode is None else self.encode(params, x).astype(jnp.float32)
    b, h0, w0, _ = z0.shape
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)

    def one(total, step):
      j, t = step
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, j), z0.shape[1:], jnp.float32))(keys)
      xt = schedulers.add_noise(self.sched, z0, noise, t)
      if self.in_channels == 2 * self.latent_channels + 1:  # inpainting UNet: nothing masked
        xt = jnp.concatenate([xt, jnp.zeros_like(xt[..., :1]), z0], axis=-1)
      _, state = self.unet.apply({"params": params["unet"]}, xt, jnp.full((b,), t, jnp.int32), context,
                                 mutable=["intermediates"])
      maps = []
      for path, probs in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        if "cross_attn" not in jax.tree_util.keystr(path):
          continue
        m = jnp.einsum("bhql,bl->bq", probs.astype(jnp.float32), weights) / probs.shape[1]
        lh, lw = _layer_grid(m.shape[1], h0, w0)
        m = m.reshape(b, lh, lw)
        if (lh, lw) != (h0, w0):
          m = jax.image.resize(m, (b, h0, w0), method="linear")
        maps.append(m)
      if not maps:
        raise SpurjaxError("segment: the UNet has no cross-attention layers to take maps from")
      return total + sum(maps) / len(maps), None

    ts = jnp.asarray(self.timesteps, jnp.int32)
    total, _ = jax.lax.scan(one, jnp.zeros((b, h0, w0), jnp.float32), (jnp.arange(len(ts), dtype=jnp.int32), ts))
    maps = jax.image.resize(total / len(ts), (b,) + images.shape[1:3], method="linear")
    return normalise_maps(maps)


def _attention_program(pipeline, timesteps: tuple[int, ...]) -> _AttentionProgram:
  """The attention-map program of `pipeline` (it compares and hashes by value, so compiled calls are
  shared by equal programs)."""
  fns = pipeline_sampling.pipeline_fns(pipeline)
  sched = schedulers.make_schedule(getattr(pipeline, "scheduler_config", None))
  n = sched.num_train_timesteps
  ts = tuple(int(min(max(round(t * n / 1000), 0), n - 1)) for t in timesteps)
  unet = pipeline.unet.clone(parent=None, capture_cross_attention=True)
  return _AttentionProgram(unet, fns.encode, sched, ts, fns.in_channels, fns.latent_channels)


def attention_maps(pipeline, images, nouns: Sequence[str], *, template: str = "a photo of a {noun}",
                   timesteps: Sequence[int] = (100, 300, 500), seed: int = 0, mesh=None,
                   batch_size: int = 8, desc: str | None = None) -> np.ndarray:
  """Cross-attention maps (B, H, W) float32 in [0, 1] of each image's noun (`nouns[b]`).

  `images`: (B, H, W, 3) uint8 or float in [0, 1]; they are resized to the model's resolution
  and the maps back to (H, W). Image b is noised with keys from fold_in(key(seed), b).
  """
  images = to_float_images(images)
  nouns = [str(n) for n in nouns]
  if len(nouns) != len(images):
    raise SpurjaxError(f"segment: {len(nouns)} nouns for {len(images)} images")
  if "{noun}" not in template:
    raise SpurjaxError(f"config ddb.segment.template={template!r} must contain {{noun}}")
  if not timesteps:
    raise SpurjaxError("config ddb.segment.timesteps is empty")
  prog = _attention_program(pipeline, tuple(int(t) for t in timesteps))
  prompts = [template.format(noun=n) for n in nouns]
  weights = noun_token_weights(pipeline.tokenizer, prompts, nouns)
  contexts = np.asarray(pipeline_sampling.encode_prompts(pipeline, prompts))
  small = resize_images(images, diffusion_size(pipeline))
  params = pipeline_sampling.pipeline_fns(pipeline).params
  rows = np.arange(len(images), dtype=np.int32)
  maps = sharding.map_batches(prog, (params, jax.random.key(int(seed))),
                              (small, contexts, weights, rows), mesh=mesh, batch_size=batch_size, desc=desc)
  back = resize_images(maps[..., None], images.shape[1:3])[..., 0]
  return np.asarray(normalise_maps(jnp.asarray(back)))
