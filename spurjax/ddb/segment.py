"""Stage segment: a mask of the causal object of every selected image.

Methods (`cfg.ddb.segment.method`):
- "attention" (language-guided, in place of the paper's LangSAM): the image is noised to a
  few timesteps, the frozen diffusion UNet runs on it with the prompt "a photo of a {noun}",
  and the cross-attention probabilities toward the noun's token(s) are averaged over heads,
  layers (each resized to the latent grid) and timesteps, upsampled, normalised to [0, 1],
  thresholded by Otsu and cleaned. One jitted program per batch shape, sharded over the mesh.
- "diffedit": DiffEdit contrast masks (`spurjax.ddb.diffedit`): where the diffusion model's
  prediction on the noised image changes between the image's class prompt and another class's;
  optionally the mask's grown bounding box or the square around it (`ddb.segment.box`).
- "gradcam" (alias "saliency"): Grad-CAM of the ERM classifier toward the image's class on
  the last module with a 4-D (NHWC) output, found by intercepting module calls (no change to
  the models is needed; for ResNets that is the last residual block, for SmallCNN its last
  BatchNorm, taken through its ReLU). Thresholded and cleaned the same way.
- "given": the dataset's own mask column (an error if a selected row has none).

Cleaning (host, scipy.ndimage): binary opening then closing with a disk of `segment_radius`,
hole filling, keeping connected components of at least `segment_keep_ratio` of the largest,
then an optional dilation by `segment_dilate` pixels. An empty result falls back to the raw
Otsu mask.

Artefact `Masks`; on disk `segment/masks/<table index>.png` (at the base image size: the
classifier's eval resize, before its center crop) and `segment/iou.json` (mean IoU against the
dataset's masks for the chosen method and those of `segment_compare`, when the dataset has masks).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spurjax import rng as rng_ids
from spurjax import sharding
from spurjax.ddb import inpaint as inpaint_lib
from spurjax.diffusion import sampling, schedulers
from spurjax.data.boxes import box_masks
from spurjax.ddb.nouns import nouns_for
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage

STAGE = "segment"
METHODS = ("attention", "diffedit", "gradcam", "given")
DIFFUSION_METHODS = ("attention", "diffedit")
_ALIASES = {"saliency": "gradcam", "cross_attention": "attention", "langsam": "attention"}



def method_name(name: str) -> str:
  m = _ALIASES.get(str(name), str(name))
  if m not in METHODS:
    raise SpurjaxError(f"config ddb.segment.method={name!r} must be one of {', '.join(METHODS)} (or 'saliency')")
  return m


# ---------------------------------------------------------------- thresholds, cleaning, IoU


@functools.partial(jax.jit, static_argnames="bins")
def otsu_threshold(values: jax.Array, bins: int = 256) -> jax.Array:
  """Otsu's threshold of values in [0, 1]: maximises the between-class variance of a histogram.

  Values strictly above the threshold are the foreground. Works under jit / vmap.
  """
  v = jnp.clip(jnp.ravel(values).astype(jnp.float32), 0.0, 1.0)
  idx = jnp.minimum((v * bins).astype(jnp.int32), bins - 1)
  hist = jnp.zeros((bins,), jnp.float32).at[idx].add(1.0)
  p = hist / jnp.maximum(hist.sum(), 1.0)
  centers = (jnp.arange(bins, dtype=jnp.float32) + 0.5) / bins
  omega = jnp.cumsum(p)
  mu = jnp.cumsum(p * centers)
  between = (mu[-1] * omega - mu) ** 2 / jnp.maximum(omega * (1.0 - omega), 1e-12)
  between = jnp.where((omega > 0) & (omega < 1), between, -1.0)
  k = jnp.argmax(between)
  return (k + 1).astype(jnp.float32) / bins


@jax.jit
def normalise_maps(maps: jax.Array) -> jax.Array:
  """Per-map min-max scaling of (B, H, W) maps to [0, 1] (a constant map becomes 0)."""
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  return jnp.where(hi > lo, (maps - lo) / jnp.maximum(hi - lo, 1e-12), 0.0)


@jax.jit
def otsu_masks(maps: jax.Array) -> jax.Array:
  """Boolean (B, H, W): each normalised map above its own Otsu threshold."""
  maps = normalise_maps(maps.astype(jnp.float32))
  thr = jax.vmap(otsu_threshold)(maps)
  return maps > thr[:, None, None]


def _disk(radius: int) -> np.ndarray:
  r = int(radius)
  y, x = np.ogrid[-r:r + 1, -r:r + 1]
  return x * x + y * y <= r * r


def clean_mask(mask, radius: int = 1, keep_ratio: float = 0.25, dilate: int = 0) -> np.ndarray:
  """Opening and closing, hole filling, components >= keep_ratio x the largest, optional dilation."""
  raw = np.asarray(mask, bool)
  m = raw
  if radius > 0:
    m = ndimage.binary_opening(m, _disk(radius))
    m = ndimage.binary_closing(m, _disk(radius), border_value=0)
  m = ndimage.binary_fill_holes(m)
  labels, n = ndimage.label(m)
  if n > 1:
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= keep_ratio * sizes.max())[0] + 1
    m = np.isin(labels, keep)
  if not m.any():
    m = raw
  if dilate > 0 and m.any():
    m = ndimage.binary_dilation(m, _disk(dilate))
  return m


def clean_masks(masks, radius: int = 1, keep_ratio: float = 0.25, dilate: int = 0) -> np.ndarray:
  return np.stack([clean_mask(m, radius, keep_ratio, dilate) for m in np.asarray(masks)])


def mask_iou(pred, true) -> float:
  """Intersection over union of two boolean masks (1.0 when both are empty)."""
  p, t = np.asarray(pred, bool), np.asarray(true, bool)
  if p.shape != t.shape:
    raise SpurjaxError(f"mask_iou: shapes {p.shape} and {t.shape} differ")
  union = np.logical_or(p, t).sum()
  return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def mean_iou(preds, trues) -> float:
  """Mean of `mask_iou` over pairs (NaN for no pairs)."""
  values = [mask_iou(p, t) for p, t in zip(preds, trues)]
  return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------- language-guided masks


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
  fns = sampling.pipeline_fns(pipeline)
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
  images = inpaint_lib.to_float_images(images)
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
  contexts = np.asarray(sampling.encode_prompts(pipeline, prompts))
  small = inpaint_lib.resize_images(images, inpaint_lib.diffusion_size(pipeline))
  params = sampling.pipeline_fns(pipeline).params
  rows = np.arange(len(images), dtype=np.int32)
  maps = sharding.map_batches(prog, (params, jax.random.key(int(seed))),
                              (small, contexts, weights, rows), mesh=mesh, batch_size=batch_size, desc=desc)
  back = inpaint_lib.resize_images(maps[..., None], images.shape[1:3])[..., 0]
  return np.asarray(normalise_maps(jnp.asarray(back)))


# ---------------------------------------------------------------- Grad-CAM


def feature_module_path(model: nn.Module, variables, image_shape: Sequence[int]) -> tuple[str, ...]:
  """Path of the last submodule whose call returns a 4-D (NHWC) array: the Grad-CAM layer."""
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    if context.method_name == "__call__" and path and getattr(out, "ndim", 0) == 4:
      seen.append(path)
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  if not seen:
    raise SpurjaxError(f"gradcam: {type(model).__name__} has no submodule with a 4-D (NHWC) output")
  return seen[-1]


def _logits_with_delta(model, path, variables, x, delta):
  """Logits with `delta` added to the output of module `path`; also returns that output."""
  found = {}

  def icpt(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and tuple(context.module.path) == path:
      out = out + delta.astype(out.dtype)
      found["a"] = out
    return out

  with nn.intercept_methods(icpt):
    logits = model.apply(variables, x, train=False)
  return logits, found["a"]


@dataclasses.dataclass(frozen=True)
class _GradCam:
  """Grad-CAM of `model` on module `path` (hashes by value: one compiled program per equal setting)."""
  model: nn.Module
  path: tuple
  mean: tuple
  std: tuple
  feature_shape: tuple

  def __call__(self, variables, images, classes):
    from spurjax.train.step import normalise
    x = normalise(images, self.mean, self.std)

    def score(delta):
      logits, acts = _logits_with_delta(self.model, self.path, variables, x, delta)
      picked = jnp.take_along_axis(logits.astype(jnp.float32), classes[:, None], axis=1)
      return picked.sum(), acts

    delta = jnp.zeros((images.shape[0],) + self.feature_shape, jnp.float32)
    grads, acts = jax.grad(score, has_aux=True)(delta)
    acts = jax.nn.relu(acts.astype(jnp.float32))
    alpha = grads.mean(axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts, alpha))
    return jax.image.resize(cam, (images.shape[0],) + images.shape[1:3], method="linear")


def gradcam_maps(model: nn.Module, variables, images, classes, *, mean: Sequence[float], std: Sequence[float],
                 mesh=None, batch_size: int = 32) -> np.ndarray:
  """Grad-CAM maps (B, H, W) float32 in [0, 1] of uint8 `images` toward `classes`, at the images' size."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise SpurjaxError(f"gradcam: expected uint8 (B, H, W, 3) images, got {images.dtype} {images.shape}")
  classes = np.asarray(classes, np.int32).reshape(-1)
  variables = {k: v for k, v in dict(variables).items()}
  path = feature_module_path(model, variables, images.shape[1:])
  prog = _GradCam(model, path, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                  _feature_shape(model, path, variables, images.shape[1:]))
  maps = sharding.map_batches(prog, (variables,), (images, classes), mesh=mesh, batch_size=batch_size)
  return np.asarray(normalise_maps(jnp.asarray(maps)))


def _feature_shape(model, path, variables, image_shape) -> tuple[int, ...]:
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and tuple(context.module.path) == path:
      shapes["s"] = tuple(out.shape[1:])
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  return shapes["s"]


# ---------------------------------------------------------------- masks of a method


def base_mask(mask: np.ndarray, cfg) -> np.ndarray:
  """A dataset mask put through the classifier's deterministic base transform (crop, resize)."""
  from spurjax.data.pipeline import base_image
  from spurjax.train.loop import preprocess_from_config
  m = np.asarray(mask, bool).astype(np.uint8) * 255
  return base_image(m, preprocess_from_config(cfg)) > 127


def given_masks(table, indices, cfg) -> np.ndarray:
  """The dataset's masks of `indices` at the base image size; an error if a row has none."""
  if table.mask_refs is None or table.read_mask is None:
    raise SpurjaxError(f"config ddb.segment.method='given': dataset {table.name} has no mask column")
  out = []
  for i in indices:
    m = table.mask(int(i))
    if m is None:
      raise SpurjaxError(f"config ddb.segment.method='given': dataset {table.name} row {int(i)} has no mask")
    out.append(base_mask(m, cfg))
  return np.stack(out)


def _true_masks(table, indices, cfg) -> list[np.ndarray | None]:
  if table.mask_refs is None or table.read_mask is None:
    return [None] * len(indices)
  out = []
  for i in indices:
    m = table.mask(int(i))
    out.append(None if m is None else base_mask(m, cfg))
  return out


def compute_masks(ctx, method: str, images: np.ndarray, indices, classes, erm=None) -> np.ndarray:
  """Boolean (B, H, W) masks of uint8 base `images` (table rows `indices`, classes `classes`) by `method`,
  each replaced by its grown box or square when `ddb.segment.box` says so (not the dataset's own masks)."""
  method = method_name(method)
  masks = _method_masks(ctx, method, images, indices, classes, erm)
  if method == "given":
    return masks
  return box_masks(masks, str(ctx.cfg.ddb.segment.box), int(ctx.cfg.ddb.segment.box_grow))


def _method_masks(ctx, method: str, images: np.ndarray, indices, classes, erm=None) -> np.ndarray:
  cfg, d = ctx.cfg, ctx.cfg.ddb.segment
  if method == "given":
    return given_masks(ctx.table, indices, cfg)
  if method == "diffedit":
    return diffedit_masks(ctx, images, classes)
  if method == "attention":
    nouns = nouns_for(cfg, ctx.table)
    maps = attention_maps(ctx.load_pipeline(), images, [nouns[c] for c in classes],
                          template=str(d.template), timesteps=tuple(d.timesteps), seed=int(cfg.seed),
                          mesh=ctx.mesh, batch_size=int(d.batch_size), desc="segment: attention")
  else:
    if erm is None:
      raise SpurjaxError("config ddb.segment.method='gradcam' needs the ERM classifier (model and variables)")
    maps = gradcam_maps(erm.model, erm.variables, images, classes, mean=cfg.data.mean, std=cfg.data.std,
                        mesh=ctx.mesh, batch_size=int(cfg.train.eval_batch_size))
  raw = np.asarray(otsu_masks(jnp.asarray(maps)))
  return clean_masks(raw, int(d.radius), float(d.keep_ratio), int(d.dilate))


def refine_settings(d) -> dict:
  """`diffedit.Settings` fields of the colour refinement from `ddb.segment.diffedit_refine` (bool) and
  `ddb.segment.diffedit_refine_band` ((low, high) in units of the map's mean)."""
  if not bool(d.diffedit_refine):
    return {}
  from spurjax.ddb import diffedit
  low, high = diffedit.parse_band(tuple(d.diffedit_refine_band), "config ddb.segment.diffedit_refine_band")
  return {"refine": True, "refine_low": low, "refine_high": high}


def check_config(ctx) -> None:
  """Before any work: the method names, the diffusion model directory when a method needs one, and
  the colour refinement's band when DiffEdit masks are made or compared."""
  if set(_methods(ctx.cfg)) & set(DIFFUSION_METHODS):
    from spurjax.diffusion.model_dir import unet_config
    unet_config(ctx.diffusion_dir)
  if "diffedit" in _methods(ctx.cfg):
    refine_settings(ctx.cfg.ddb.segment)


def diffedit_masks(ctx, images: np.ndarray, classes) -> np.ndarray:
  """DiffEdit contrast masks (`spurjax.ddb.diffedit`) of uint8 base `images` at their own size: the
  prompt of each image's class against that of the next class ((c + 1) mod K), chunk c of
  `ddb.segment.batch_size` images noised from its own seed (stream `rng.DIFFEDIT`)."""
  from spurjax.ddb import diffedit
  cfg, d = ctx.cfg, ctx.cfg.ddb.segment
  pipeline = ctx.load_pipeline()
  nouns = nouns_for(cfg, ctx.table)
  k = ctx.table.num_classes
  source = [str(d.template).format(noun=nouns[c]) for c in classes]
  target = [str(d.template).format(noun=nouns[(c + 1) % k]) for c in classes]
  small = inpaint_lib.resize_images(inpaint_lib.to_float_images(images), inpaint_lib.diffusion_size(pipeline))
  settings = diffedit.Settings(strength=float(d.diffedit_strength), n_draws=int(d.diffedit_draws),
                               threshold=float(d.diffedit_threshold), **refine_settings(d))
  bs = max(1, int(d.batch_size))
  out = []
  from tqdm import tqdm
  for c, start in enumerate(tqdm(range(0, len(small), bs), desc="segment: diffedit", leave=False,
                                 disable=jax.process_index() != 0)):
    rows = slice(start, start + bs)
    seed = int(np.random.SeedSequence([int(cfg.seed), rng_ids.DIFFEDIT, c]).generate_state(1)[0] >> 1)
    _, m = diffedit.pipeline_contrast_masks(pipeline, small[rows], source[rows], target[rows], seed=seed,
                                            settings=settings)
    out.append(np.asarray(m))
  return inpaint_lib.resize_masks(np.concatenate(out), images.shape[1:3])


# ---------------------------------------------------------------- stage


@dataclasses.dataclass
class Masks:
  """The stage's artefact: {table index: bool (H, W) mask} at the base image size, and the IoU summary.

  `raw` holds the method's masks before `ddb.segment.box` (the same as `masks` when no box is taken);
  the paste generator cuts donor objects by them.
  """
  masks: dict[int, np.ndarray]
  iou: dict
  raw: dict[int, np.ndarray] | None = None

  def __post_init__(self):
    if self.raw is None:
      self.raw = self.masks


def _methods(cfg) -> list[str]:
  """The chosen method first, then the comparison methods (each once)."""
  out = [method_name(cfg.ddb.segment.method)]
  for m in cfg.ddb.segment.compare:
    m = method_name(m)
    if m not in out and m != "given":
      out.append(m)
  return out


def compute(ctx, inputs, folder: str) -> None:
  """Masks of the selected images by `ddb.segment.method` into `folder/masks/*.png`, and `iou.json` against the
  dataset's masks for that method and those of `ddb.segment.compare`."""
  from spurjax.data.images import save_png
  from spurjax.ddb.select import selected_indices

  table = ctx.table
  sel = selected_indices(inputs["select"])
  indices = [int(i) for c in sorted(sel) for i in sel[c]]
  classes = [int(table.y[i]) for i in indices]
  methods = _methods(ctx.cfg)
  images = np.stack([ctx.sources["eval"](i) for i in indices])
  box, grow = str(ctx.cfg.ddb.segment.box), int(ctx.cfg.ddb.segment.box_grow)
  boxed = lambda name, raw: raw if name == "given" else box_masks(raw, box, grow)  # noqa: E731
  raw = _method_masks(ctx, methods[0], images, indices, classes, inputs["erm"])
  masks = boxed(methods[0], raw)
  truth = _true_masks(table, indices, ctx.cfg)
  have = [n for n, t in enumerate(truth) if t is not None]
  iou = {"num_images": len(have), "method": methods[0], "mask_box": box, "mask_box_grow": grow,
         "mean_iou": {}, "mean_iou_raw": {}}
  if have:
    scored = {methods[0]: raw}
    for other in methods[1:]:
      try:
        scored[other] = _method_masks(ctx, other, images, indices, classes, inputs["erm"])
      except SpurjaxError as e:  # a comparison needing a model that is not there is skipped
        iou.setdefault("skipped", {})[other] = str(e)
    for name, m in scored.items():   # mean_iou: the masks as used (boxed); mean_iou_raw: the method's own
      used = masks if name == methods[0] else boxed(name, m)   # boxed once (not once per image)
      iou["mean_iou"][name] = mean_iou([used[n] for n in have], [truth[n] for n in have])
      iou["mean_iou_raw"][name] = mean_iou([m[n] for n in have], [truth[n] for n in have])
    iou["per_image"] = {str(indices[n]): mask_iou(masks[n], truth[n]) for n in have}
  if jax.process_index() == 0:
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    for i, m in zip(indices, masks):
      save_png(os.path.join(folder, "masks", f"{i}.png"), m)
    if raw is not masks:
      os.makedirs(os.path.join(folder, "raw"), exist_ok=True)
      for i, m in zip(indices, raw):
        save_png(os.path.join(folder, "raw", f"{i}.png"), m)
    with open(os.path.join(folder, "iou.json"), "w", encoding="utf-8") as f:
      json.dump({**iou, "indices": indices}, f, indent=1)


def load(ctx, folder: str) -> Masks:
  from spurjax.data.images import read_mask
  with open(os.path.join(folder, "iou.json"), encoding="utf-8") as f:
    iou = json.load(f)
  indices = iou.pop("indices")
  masks = {int(i): read_mask(os.path.join(folder, "masks", f"{i}.png")) for i in indices}
  raw = None
  if os.path.isdir(os.path.join(folder, "raw")):
    raw = {int(i): read_mask(os.path.join(folder, "raw", f"{i}.png")) for i in indices}
  return Masks(masks, iou, raw)


STAGE = Stage(name="segment", groups=("ddb.segment",), shared=("seed", "ddb.nouns", "diffusion.path"),
              upstream=("erm", "select"), compute=compute, load=load, validate=check_config,
              identity=lambda ctx: ctx.diffusion_digest if set(_methods(ctx.cfg)) & set(DIFFUSION_METHODS) else None)
