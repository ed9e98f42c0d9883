"""The masks of one method for the selected images: the dataset's own (`given`), language-guided
cross-attention, DiffEdit contrast or Grad-CAM maps, thresholded and cleaned (`ddb.segment.*`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import rng as rng_ids
from spurjax.data.resize import resize_images, resize_masks
from spurjax.ddb.images import diffusion_size, to_float_images
from spurjax.ddb.nouns import nouns_for
from spurjax.ddb.segment.attention import attention_maps
from spurjax.ddb.segment.gradcam import gradcam_maps
from spurjax.ddb.segment.masks import clean_masks, otsu_masks
from spurjax.errors import SpurjaxError


def base_mask(mask: np.ndarray, cfg) -> np.ndarray:
  """A dataset mask put through the classifier's deterministic base transform (crop, resize)."""
  from spurjax.data.pipeline import base_image
  from spurjax.train.loop import preprocess_from_config
  m = np.asarray(mask, bool).astype(np.uint8) * 255
  return base_image(m, preprocess_from_config(cfg)) > 127


def true_masks(table, indices, cfg) -> list[np.ndarray | None]:
  """The dataset's masks of `indices` at the base image size (None for a row without one)."""
  if table.mask_refs is None or table.read_mask is None:
    return [None] * len(indices)
  out = []
  for i in indices:
    m = table.mask(int(i))
    out.append(None if m is None else base_mask(m, cfg))
  return out


def given_masks(table, indices, cfg) -> np.ndarray:
  """The dataset's masks of `indices` at the base image size; an error if a row has none."""
  if table.mask_refs is None or table.read_mask is None:
    raise SpurjaxError(f"config ddb.segment.method='given': dataset {table.name} has no mask column")
  masks = true_masks(table, indices, cfg)
  for i, m in zip(indices, masks):
    if m is None:
      raise SpurjaxError(f"config ddb.segment.method='given': dataset {table.name} row {int(i)} has no mask")
  return np.stack(masks)


def method_masks(ctx, method: str, images: np.ndarray, indices, classes, erm=None) -> np.ndarray:
  """Boolean (B, H, W) masks of uint8 base `images` (table rows `indices`, classes `classes`) by `method`."""
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
  from spurjax.ddb.segment import diffedit
  low, high = diffedit.parse_band(tuple(d.diffedit_refine_band), "config ddb.segment.diffedit_refine_band")
  return {"refine": True, "refine_low": low, "refine_high": high}


def diffedit_masks(ctx, images: np.ndarray, classes) -> np.ndarray:
  """DiffEdit contrast masks (`spurjax.ddb.segment.diffedit`) of uint8 base `images` at their own size: the
  prompt of each image's class against that of the next class ((c + 1) mod K), chunk c of
  `ddb.segment.batch_size` images noised from its own seed (stream `rng.DIFFEDIT`)."""
  from spurjax.ddb.segment import diffedit
  cfg, d = ctx.cfg, ctx.cfg.ddb.segment
  pipeline = ctx.load_pipeline()
  nouns = nouns_for(cfg, ctx.table)
  k = ctx.table.num_classes
  source = [str(d.template).format(noun=nouns[c]) for c in classes]
  target = [str(d.template).format(noun=nouns[(c + 1) % k]) for c in classes]
  small = resize_images(to_float_images(images), diffusion_size(pipeline))
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
  return resize_masks(np.concatenate(out), images.shape[1:3])
