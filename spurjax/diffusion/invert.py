"""Textual inversion: one new token per class, learned in a frozen text-to-image model.

  spurjax invert --config configs/invert_synth.py --workdir W [--config.diffusion.path=DIR]
                 [--config.data.root=DIR] [--config.key=value ...]

Only the new rows of the text encoder's token embedding table train (the DDPM noise loss of
`spurjax.diffusion.train`); every other weight is frozen and stays bit-identical. Results are
written in the diffusers convention (`spurjax.diffusion.token_embeds`): `learned_embeds.safetensors`
= {token: vector} (all classes) plus one single-token file per class that diffusers'
`load_textual_inversion` reads.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping, Sequence

import jax
import numpy as np

from spurjax import rng as rng_ids
from spurjax import sharding as shd
from spurjax.data.resize import masks_nearest, square_box_bicubic
from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, train as dtrain
from spurjax.diffusion.token_embeds import EMBEDS_FILE, add_tokens, initial_vectors, save_learned_embeds
from spurjax.errors import SpurjaxError

DEFAULT_TEMPLATES = (
    "a photo of a {token} {noun}",
    "a picture of a {token} {noun}",
    "a photo of the {token} {noun}",
    "a good photo of a {token} {noun}",
    "a close-up photo of a {token} {noun}",
    "a bright photo of the {token} {noun}",
    "a photo of one {token} {noun}",
    "a {token} {noun}",
)
_EMBED_KEY = "/".join(dtrain.TOKEN_EMBEDDING)


# ----------------------------------------------------------------------------- helpers


def model_resolution(pipeline) -> int:
  """Image side the model was trained at: UNet sample_size times the VAE's downscale factor."""
  size = dict(pipeline.unet.config).get("sample_size")
  if not isinstance(size, int) or size < 1:
    raise SpurjaxError(f"{pipeline.path or 'pipeline'}: unet config has no integer sample_size")
  return size * pipeline.vae_scale_factor


def prepare_images(images: np.ndarray, size: int, what: str) -> np.ndarray:
  """uint8 NHWC RGB at `size` x `size` (un-normalised; the step maps them to [-1, 1])."""
  a = np.asarray(images)
  if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3, 4) or len(a) == 0:
    raise SpurjaxError(f"{what}: expected a non-empty uint8 NHWC RGB array, got {a.dtype} {tuple(a.shape)}")
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  a = a[..., :3]
  return np.stack([square_box_bicubic(np.ascontiguousarray(x), size) for x in a])


def prepare_masks(masks, size: int, count: int, what: str) -> np.ndarray:
  """float32 (N, size, size) in {0, 1} from bool / 0-1 (N, H, W) masks (nearest resize), one per image."""
  if masks is None:
    raise SpurjaxError(f"{what}: missing")
  m = np.asarray(masks)
  if m.ndim != 3 or len(m) != count:
    raise SpurjaxError(f"{what}: expected {count} masks of shape (H, W), got {tuple(m.shape)}")
  if not m.reshape(len(m), -1).any(1).all():
    raise SpurjaxError(f"{what}: a mask is empty")
  return masks_nearest(m, size)


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
  templates = tuple(templates)
  if not templates:
    raise SpurjaxError("textual inversion: no templates given")
  for t in templates:
    if not isinstance(t, str) or "{token}" not in t:
      raise SpurjaxError(f"textual inversion template {t!r} must contain '{{token}}' (and may use '{{noun}}')")
    try:
      t.format(token="x", noun="y")
    except (KeyError, IndexError, ValueError) as e:
      raise SpurjaxError(f"textual inversion template {t!r}: bad placeholder ({e})") from None
  return templates


def _per_class(value, classes: Sequence[int], name: str) -> dict[int, str]:
  if isinstance(value, str):
    return {c: value for c in classes}
  if isinstance(value, Mapping):
    missing = [c for c in classes if c not in value]
    if missing:
      raise SpurjaxError(f"textual inversion: {name} has no entry for class {missing[0]}")
    return {c: str(value[c]) for c in classes}
  value = list(value)
  if max(classes) >= len(value):
    raise SpurjaxError(f"textual inversion: {name} has {len(value)} entries but class {max(classes)} is used")
  return {c: str(value[c]) for c in classes}


# ----------------------------------------------------------------------------- learning


def learn_tokens(pipeline, images_by_class: Mapping[int, np.ndarray], nouns, *, placeholder_fmt: str = "<c{}>",
                 initializer=None, steps: int = 3000, lr: float = 5e-4, batch: int = 1, grad_accum: int = 4,
                 seed: int = 0, workdir: str | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 weight_decay: float = 1e-2, mesh=None, log_every: int = 50, ckpt_every: int = 500,
                 masks_by_class: Mapping[int, np.ndarray] | None = None, mask_weight: float = 1.0):
  """Learns one token embedding per class with everything else frozen.

  Args:
    pipeline: a loaded `loading.Pipeline` (unet, text encoder, tokenizer, scheduler; VAE optional).
    images_by_class: class -> uint8 NHWC RGB images (any size; resized to the model's resolution).
    nouns: class nouns (a sequence indexed by class, or a dict) used by the templates' {noun}.
    placeholder_fmt: the token of class c is placeholder_fmt.format(c).
    initializer: word(s) whose embedding starts each token (str for all, or per class);
      default the class noun. Multi-token words start from the mean of their rows.
    steps: optimizer steps, each of `batch` x `grad_accum` examples.
    lr: base learning rate, scaled by batch * grad_accum (the effective rate of the paper).
    workdir: if given, checkpoints (resumable) and the learned_embeds files are written there.
    templates: prompts with {token} and optionally {noun}.
    masks_by_class: class -> bool (N, H, W) masks of those images (an inpainting UNet only): the
      token is learned by repainting the masked region from its context (the object's square, as
      DDB inpaints it) instead of the whole image, so it describes the object rather than the scene.
      None: the whole image is masked (plain textual inversion).
    mask_weight: loss weight inside the mask (outside 1), with `masks_by_class`.
  Returns:
    (pipeline with the tokens added and their rows learned, {token: float32 vector}).
  """
  if not images_by_class:
    raise SpurjaxError("textual inversion: no images given")
  classes = sorted(int(c) for c in images_by_class)
  if steps < 1 or batch < 1 or grad_accum < 1:
    raise SpurjaxError(f"textual inversion: steps={steps}, batch={batch}, grad_accum={grad_accum} must be >= 1")
  templates = _check_templates(templates)
  nouns = _per_class(nouns, classes, "nouns")
  inits = _per_class(nouns if initializer in (None, "") else initializer, classes, "initializer")
  tokens = [placeholder_fmt.format(c) for c in classes]
  res = model_resolution(pipeline)
  pixels = {c: prepare_images(images_by_class[c], res, f"images of class {c}") for c in classes}

  region = None
  if masks_by_class is not None:
    if not pipeline.is_inpaint:
      raise SpurjaxError("textual inversion on masks needs an inpainting UNet ([noisy, mask, masked] input); "
                         f"{pipeline.path or 'this pipeline'} has a plain one")
    region = np.concatenate([prepare_masks(masks_by_class.get(c), res, len(pixels[c]), f"masks of class {c}")
                             for c in classes])

  pipe, ids = add_tokens(pipeline, tokens, initial_vectors(pipeline, [inits[c] for c in classes]))

  # Every (image, class) pair; prompts for every (template, class).
  images = np.concatenate([pixels[c] for c in classes])
  labels = np.concatenate([np.full(len(pixels[c]), k, np.int32) for k, c in enumerate(classes)])
  prompt_ids = np.stack([tok_lib.encode(pipe.tokenizer, [t.format(token=tokens[k], noun=nouns[c])
                                                         for k, c in enumerate(classes)]) for t in templates])
  for k, c in enumerate(classes):
    if ids[k] not in prompt_ids[:, k]:
      raise SpurjaxError(f"textual inversion: token {tokens[k]} is cut off by the tokenizer's max length "
                         f"{prompt_ids.shape[-1]}; shorten the templates")

  if mesh is None:
    n = jax.device_count()
    mesh = shd.make_mesh(jax.devices()[:math.gcd(batch, n)])
  elif batch % mesh.devices.size:
    raise SpurjaxError(f"textual inversion: batch={batch} is not divisible by the {mesh.devices.size} devices")
  rows = clip_text.vocab_size_of(pipe.text_params)
  row_mask = np.zeros(rows, bool)
  row_mask[ids] = True
  masks = {_EMBED_KEY: row_mask}
  model = dtrain.Model.from_pipeline(pipe)
  params = dtrain.pipeline_params(pipe)
  paths = (dtrain.TOKEN_EMBEDDING,)
  eff_lr = float(lr) * batch * grad_accum
  tx = dtrain.make_tx(lr=eff_lr, optimizer="adamw", weight_decay=weight_decay, grad_accum=grad_accum,
                      row_masks=masks)
  state = dtrain.init_state(params, paths, tx)
  step_fn = dtrain.make_train_step(model, tx, paths, mesh, row_masks=masks, grad_accum=grad_accum,
                                   mask_weight=float(mask_weight) if region is not None else 1.0)

  def batch_fn(i: int) -> dict:
    idx = dtrain.sample_batch_indices(len(images), batch, seed, i)
    t = np.random.default_rng([seed, rng_ids.INVERT_TEMPLATE, i]).integers(len(templates), size=batch)
    out = {"pixels": images[idx], "ids": prompt_ids[t, labels[idx]]}
    if region is not None:
      out["masks"] = region[idx]
    return out

  if workdir:
    os.makedirs(workdir, exist_ok=True)
  state, history = dtrain.train(step_fn, state, batch_fn, steps=steps * grad_accum, mesh=mesh,
                                rng=jax.random.key(seed), workdir=workdir, desc="textual inversion",
                                log_every=log_every, ckpt_every=ckpt_every, paths=paths,
                                log_file=os.path.join(workdir, "loss.jsonl") if workdir else None)
  learned = np.asarray(state.params["text"]["embeddings"]["token_embedding"]["embedding"])
  text = jax.tree.map(np.asarray, state.params["text"])
  out = dataclasses.replace(pipe, text_params=text)
  embeddings = {t: learned[i].astype(np.float32) for t, i in zip(tokens, ids)}
  if workdir and jax.process_index() == 0:
    save_learned_embeds(embeddings, os.path.join(workdir, EMBEDS_FILE))
    for c, t in zip(classes, tokens):
      save_learned_embeds({t: embeddings[t]}, os.path.join(workdir, f"learned_embeds_class{c}.safetensors"))
    info = {"tokens": {t: {"class": c, "noun": nouns[c], "initializer": inits[c], "images": int(len(pixels[c]))}
                       for c, t in zip(classes, tokens)},
            "steps": steps, "batch": batch, "grad_accum": grad_accum, "lr": lr, "effective_lr": eff_lr,
            "templates": list(templates), "resolution": res, "seed": seed,
            "masks": "given" if region is not None else "full image", "mask_weight": float(mask_weight),
            "final_loss": history[-1]["loss"] if history else None}
    with open(os.path.join(workdir, "tokens.json"), "w") as f:
      json.dump(info, f, indent=2)
  return out, embeddings


# ----------------------------------------------------------------------------- CLI


def majority_images(table, k: int, seed: int = 0, group: str = "majority") -> dict[int, np.ndarray]:
  """Per class, `k` training images of its most frequent place (or of every place with group="all")."""
  from spurjax.data.table import TRAIN
  train = table.indices(TRAIN)
  rng = np.random.default_rng(seed)
  out = {}
  for c in range(table.num_classes):
    in_class = train[table.y[train] == c]
    if group == "majority":
      counts = np.bincount(table.place[in_class], minlength=table.num_places)
      in_class = in_class[table.place[in_class] == int(np.argmax(counts))]
    elif group != "all":
      raise SpurjaxError(f"config invert.group: unknown value {group!r} (majority, all)")
    if len(in_class) == 0:
      raise SpurjaxError(f"{table.name}: class {c} has no training images")
    pick = rng.choice(in_class, size=min(k, len(in_class)), replace=False)
    out[c] = np.stack([table.image(int(i)) for i in np.sort(pick)])
  return out


def run(cfg, workdir: str):
  """`spurjax invert`: learns the class tokens for the dataset of `cfg.data`."""
  from spurjax.data import load_table
  from spurjax.diffusion.builtin import resolve_diffusion_path
  path = resolve_diffusion_path(cfg.diffusion.path)
  pipeline = loading.load_pipeline(path)
  table = load_table(cfg.data)
  inv = cfg.invert
  images = majority_images(table, int(inv.num_images), int(cfg.seed), str(inv.group))
  nouns = list(inv.nouns) if inv.nouns else list(table.class_names or [])
  if len(nouns) < table.num_classes:
    raise SpurjaxError(f"config invert.nouns: need one noun per class ({table.num_classes}); "
                       f"the dataset has no class names either")
  _, embeddings = learn_tokens(
      pipeline, images, nouns, placeholder_fmt=str(inv.placeholder_fmt), initializer=inv.initializer or None,
      steps=int(inv.steps), lr=float(inv.lr), batch=int(inv.batch_size), grad_accum=int(inv.grad_accum),
      seed=int(cfg.seed), workdir=workdir, templates=tuple(inv.templates) or DEFAULT_TEMPLATES,
      log_every=int(inv.log_every), ckpt_every=int(inv.ckpt_every))
  print(f"invert: learned {', '.join(embeddings)} -> {os.path.join(workdir, EMBEDS_FILE)}", flush=True)
  return embeddings


def main(argv: Sequence[str] | None = None) -> int:
  from spurjax.config_util import config_from, parse_command
  args, overrides = parse_command(argv, "spurjax invert")
  run(config_from(args.config, overrides), args.workdir)
  return 0
