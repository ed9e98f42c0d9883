"""The diffusion generator's driver: each selected image's mask repainted with another class's
prompt. Images go to the model as un-normalised RGB in [0, 1] at its native resolution (UNet
sample_size x VAE scale factor) and come back resized to the source's size; with `paste` the
generated pixels are pasted into the original through the mask, so the background is exactly the
original one whatever the model's codec error.

Edits are processed in chunks of `batch_size` rows, each sharded over the mesh; chunk c draws its
noise from fold_in(key(seed), c) (row r of the chunk: fold_in of that by r), so results depend on
(seed, batch_size) only, and a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import jax
import numpy as np
from tqdm import tqdm

from spurjax import distributed
from spurjax.data.resize import resize_images, resize_masks
from spurjax.ddb.images import diffusion_size, to_float_images
from spurjax.ddb.inpaint.prompts import Edit, attribute_of, check_tokens, class_prompts, plan_edits, resolve_mode
from spurjax.diffusion import pipeline_sampling, sampling, schedulers
from spurjax.errors import SpurjaxError


def _resolve_mode(mode: str, fns: pipeline_sampling.ModelFns) -> str:
  return resolve_mode(mode, fns.in_channels, fns.latent_channels)


def iter_counterfactuals(pipeline, images, masks, source_classes, target_tokens, nouns, *, n_samples: int = 1,
                         mode: str = "blended", num_steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
                         mesh=None, template: str = "a photo of a {token} {noun}", sampler: str = "ddim",
                         batch_size: int = 8, num_classes: int | None = None, paste: bool = True,
                         skip=None, desc: str | None = "inpaint", attributes: Sequence[str] = (),
                         eta: float = 0.0, same_class: bool = False, strength: float = 1.0,
                         guidance_interval=None, model_images=None) -> Iterator[tuple[int, list[Edit], np.ndarray | None]]:
  """Yields (chunk index, its edits, float32 (n, H, W, 3) images in [0, 1]) chunk by chunk.

  Arguments as in `make_counterfactuals`; `skip(chunk_index, edits) -> bool` marks chunks that are
  already done (they are yielded with images None and not computed); `same_class`: each image is
  repainted with its own class's prompt instead (`plan_edits`); `model_images`: the same sources as
  the model should see them (e.g. read at its resolution from the original files; default: `images`
  resized). The edits come back at the size of `images`, pasted into them through `masks`.
  """
  images = to_float_images(images)
  masks = np.asarray(masks)
  if masks.ndim == 4 and masks.shape[-1] == 1:
    masks = masks[..., 0]
  if masks.shape != images.shape[:3]:
    raise SpurjaxError(f"masks: expected shape {images.shape[:3]} to match the images, got {masks.shape}")
  masks = masks.astype(bool) if masks.dtype == bool else masks >= 0.5
  source_classes = np.asarray(source_classes, np.int64).reshape(-1)
  if len(source_classes) != len(images):
    raise SpurjaxError(f"inpaint: {len(source_classes)} source classes for {len(images)} images")
  if num_classes is None:
    num_classes = max(int(source_classes.max(initial=0)) + 1, len(nouns))
  num_classes = int(num_classes)
  edits = plan_edits(source_classes, num_classes, n_samples, same_class)
  fns = pipeline_sampling.pipeline_fns(pipeline)
  mode = _resolve_mode(mode, fns)
  if isinstance(batch_size, bool) or int(batch_size) < 1:
    raise SpurjaxError(f"config ddb.inpaint.batch_size={batch_size!r} must be a positive integer")
  devices = 1 if mesh is None else mesh.devices.size
  chunk = -(-int(batch_size) // devices) * devices
  chunks = [edits[i:i + chunk] for i in range(0, len(edits), chunk)]
  skip = skip or (lambda c, e: False)
  todo_mask = distributed.from_main(np.asarray([not skip(c, e) for c, e in enumerate(chunks)], np.int32))
  todo = {c for c in range(len(chunks)) if todo_mask[c]}
  if model_images is not None:
    model_images = to_float_images(model_images)
    if len(model_images) != len(images):
      raise SpurjaxError(f"inpaint: {len(model_images)} model images for {len(images)} images")
  prep = _prepare(pipeline, images if model_images is None else model_images, masks, target_tokens, nouns,
                  num_classes, template, guidance_scale, attributes) if todo else None
  n_attr = max(1, len(attributes))
  run = sampling.inpaint_channels if mode == "channels" else sampling.inpaint_blended
  params = fns.params
  if mesh is not None and todo:  # placed once, not per chunk (with several processes: without host copies)
    from spurjax import sharding as shd
    params = shd.replicate(params, mesh)
  base_rng = jax.random.key(int(seed))
  bar = tqdm(total=len(todo), desc=desc, disable=desc is None or jax.process_index() != 0, leave=False)
  for c, e in enumerate(chunks):
    if c not in todo:
      yield c, e, None
      continue
    rows = [x.source for x in e] + [e[-1].source] * (chunk - len(e))  # pad: one compiled shape
    targets = [x.target_class * n_attr + attribute_of(seed, x, n_attr) for x in e]
    targets += [targets[-1]] * (chunk - len(e))
    out = run(fns.denoise, prep["sched"], images=prep["images"][rows], masks=prep["masks"][rows],
              context=prep["contexts"][targets], uncond_context=prep["uncond"],
              guidance_scale=float(guidance_scale), num_steps=int(num_steps), rng=jax.random.fold_in(base_rng, c),
              sampler=sampler, eta=float(eta), params=params, encode_fn=fns.encode, decode_fn=fns.decode, mesh=mesh,
              strength=float(strength), guidance_interval=guidance_interval)
    out = np.asarray(out)[:len(e)]
    src = [x.source for x in e]
    out = resize_images(out, images.shape[1:3])
    if paste:
      out = np.where(masks[src][..., None], out, images[src])
    bar.update(1)
    yield c, e, np.clip(out, 0.0, 1.0).astype(np.float32)
  bar.close()


def _prepare(pipeline, images, masks, tokens, nouns, num_classes, template, guidance_scale, attributes=()) -> dict:
  """Prompt embeddings, schedule and the inputs resized to the model's resolution."""
  check_tokens(pipeline, tokens)
  prompts = class_prompts(template, tokens, nouns, num_classes, attributes)
  size = diffusion_size(pipeline)
  return {
      "contexts": np.asarray(pipeline_sampling.encode_prompts(pipeline, prompts)),
      "uncond": np.asarray(pipeline_sampling.empty_context(pipeline)) if float(guidance_scale) != 1.0 else None,
      "sched": schedulers.make_schedule(getattr(pipeline, "scheduler_config", None)),
      "images": resize_images(images, size),
      "masks": resize_masks(masks, size).astype(np.float32),
  }


def make_counterfactuals(pipeline, images, masks, source_classes, target_tokens, nouns, *, n_samples: int = 1,
                         mode: str = "blended", num_steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
                         mesh=None, template: str = "a photo of a {token} {noun}", sampler: str = "ddim",
                         batch_size: int = 8, num_classes: int | None = None, paste: bool = True,
                         desc: str | None = "inpaint", attributes: Sequence[str] = (),
                         eta: float = 0.0, same_class: bool = False, strength: float = 1.0,
                         guidance_interval=None) -> dict[str, np.ndarray]:
  """Counterfactual edits of every image toward every other class.

  Args:
    pipeline: a loaded diffusion pipeline (`spurjax.diffusion.loading.Pipeline`).
    images: (B, H, W, 3) uint8 or float in [0, 1] (un-normalised RGB).
    masks: (B, H, W) bool (or float, >= 0.5), True = repaint.
    source_classes: (B,) class of each image.
    target_tokens: {class: learned token string} ("" or None: no token); may be None.
    nouns: per class, the object noun ("bird"), a sequence or {class: noun}.
    n_samples: edits per (image, target class).
    mode: "blended", "channels" or "auto".
    num_steps, guidance_scale, sampler: the sampler settings (guidance 1 disables CFG).
    seed: base seed; chunk c uses fold_in(key(seed), c).
    mesh: optional mesh; each chunk is sharded over its `data` axis.
    template: prompt with {token} and {noun} (and {attribute} / {a_attribute} with `attributes`).
    batch_size: rows per chunk (rounded up to a multiple of the devices).
    num_classes: K (default: max(source class + 1, len(nouns))).
    paste: paste generated pixels into the original image through the mask.
    attributes: words (e.g. colours) of which each edit's prompt takes one (`attribute_of`).
    eta: sampler stochasticity (0: deterministic DDIM; 1: DDPM-like fresh noise each step).
    same_class: repaint each image with its own class's prompt instead (label-keeping re-inpaints;
      M = B x n_samples, target_class = source_class).
    strength: in (0, 1]; below 1 the sampler starts from the image noised part way and runs the last
      int(num_steps x strength) steps (`sampling_loop.first_step`), keeping the source's coarse layout.
    guidance_interval: None, or (t_min, t_max): classifier-free guidance only at timesteps in that
      range, the conditional prediction alone elsewhere (`guidance.guidance_weights`).

  Returns:
    {"images": float32 (M, H, W, 3) in [0, 1], "source": (M,) positions into `images`,
     "source_class", "target_class" (the labels), "sample"}, M = B x (K - 1) x n_samples
    (B x n_samples with `same_class`).
  """
  outs, edits = [], []
  for _, e, imgs in iter_counterfactuals(pipeline, images, masks, source_classes, target_tokens, nouns,
                                         n_samples=n_samples, mode=mode, num_steps=num_steps,
                                         guidance_scale=guidance_scale, seed=seed, mesh=mesh, template=template,
                                         sampler=sampler, batch_size=batch_size, num_classes=num_classes,
                                         paste=paste, desc=desc, attributes=attributes, eta=eta,
                                         same_class=same_class, strength=strength,
                                         guidance_interval=guidance_interval):
    outs.append(imgs)
    edits += e
  shape = (0,) + np.shape(images)[1:3] + (3,)
  return {
      "images": np.concatenate(outs) if outs else np.zeros(shape, np.float32),
      "source": np.asarray([e.source for e in edits], np.int64),
      "source_class": np.asarray([e.source_class for e in edits], np.int64),
      "target_class": np.asarray([e.target_class for e in edits], np.int64),
      "sample": np.asarray([e.sample for e in edits], np.int64),
  }
