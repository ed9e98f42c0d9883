"""Textual inversion: one new token per class, learned in a frozen text-to-image model.

  spurjax invert --config configs/invert_synth.py --workdir W [--config.diffusion.path=DIR]
                 [--config.data.root=DIR] [--config.key=value ...]

Only the new rows of the text encoder's token embedding table train (the DDPM noise loss of
`spurjax.diffusion.train`); every other weight is frozen and stays bit-identical. Results are
written in the diffusers convention (`spurjax.diffusion.token_embeds`): `learned_embeds.safetensors`
= {token: vector} (all classes) plus one single-token file per class that diffusers'
`load_textual_inversion` reads. Mode "joint" learns every token in one run; "per_class" runs one
independent inversion per class, as the reference runs its script once per class (`invert_runs`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from PIL import Image

from spurjax import rng as rng_ids
from spurjax.data.resize import masks_nearest, pil_resize, square_box_bicubic
from spurjax.diffusion import invert_runs as runs, loading, tokenizer as tok_lib
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
# The "object" templates of the reference's textual-inversion script (one drawn per example), with
# DDB's class noun after the token ("a photo of a <c_i> bird").
REFERENCE_TEMPLATES = tuple(t.format("{token} {noun}") for t in (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}"))
TEMPLATES = {"reference": REFERENCE_TEMPLATES, "short": DEFAULT_TEMPLATES}   # by name (ddb.invert.templates)
MODES = ("per_class", "joint")


# ----------------------------------------------------------------------------- helpers


def model_resolution(pipeline) -> int:
  """Image side the model was trained at: UNet sample_size times the VAE's downscale factor."""
  size = dict(pipeline.unet.config).get("sample_size")
  if not isinstance(size, int) or size < 1:
    raise SpurjaxError(f"{pipeline.path or 'pipeline'}: unet config has no integer sample_size")
  return size * pipeline.vae_scale_factor


def prepare_images(images: np.ndarray, size: int, what: str, resample: str = "box_bicubic") -> np.ndarray:
  """uint8 NHWC RGB at `size` x `size` (un-normalised; the step maps them to [-1, 1]); resample
  "box_bicubic": box filter when shrinking, bicubic when growing; "bicubic": bicubic both ways."""
  a = np.asarray(images)
  if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3, 4) or len(a) == 0:
    raise SpurjaxError(f"{what}: expected a non-empty uint8 NHWC RGB array, got {a.dtype} {tuple(a.shape)}")
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  a = a[..., :3]
  if resample == "bicubic":
    return np.stack([pil_resize(x, (size, size), Image.BICUBIC) for x in a])
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


def _check_templates(templates: Sequence[str] | str) -> tuple[str, ...]:
  if isinstance(templates, str):
    if templates not in TEMPLATES:
      raise SpurjaxError(f"textual inversion: templates {templates!r} is not one of {', '.join(TEMPLATES)}")
    templates = TEMPLATES[templates]
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
                 seed: int = 0, workdir: str | None = None, templates: Sequence[str] | str = DEFAULT_TEMPLATES,
                 weight_decay: float = 1e-2, mesh=None, log_every: int = 50, ckpt_every: int = 500,
                 masks_by_class: Mapping[int, np.ndarray] | None = None, mask_weight: float = 1.0,
                 mode: str = "joint", flip: float = 0.0):
  """Learns one token embedding per class with everything else frozen.

  Args:
    pipeline: a loaded `loading.Pipeline` (unet, text encoder, tokenizer, scheduler; VAE optional).
    images_by_class: class -> uint8 NHWC RGB images (any size; resized to the model's resolution).
    nouns: class nouns (a sequence indexed by class, or a dict) used by the templates' {noun}.
    placeholder_fmt: the token of class c is placeholder_fmt.format(c).
    initializer: word(s) whose embedding starts each token (str for all, or per class);
      default the class noun. Multi-token words start from the mean of their rows.
    steps: optimizer steps, each of `batch` x `grad_accum` examples (per class in per_class mode).
    lr: base learning rate, scaled by batch * grad_accum (the effective rate of the paper).
    workdir: if given, checkpoints (resumable) and the learned_embeds files are written there.
    templates: prompts with {token} and optionally {noun}, or a name of `TEMPLATES`.
    masks_by_class: class -> bool (N, H, W) masks of those images (an inpainting UNet only): the
      token is learned by repainting the masked region from its context (the object's square, as
      DDB inpaints it) instead of the whole image, so it describes the object rather than the scene.
      None: the whole image is masked (plain textual inversion).
    mask_weight: loss weight inside the mask (outside 1), with `masks_by_class`.
    mode: "joint": every token in one run (shared steps, batches mixing the classes);
      "per_class": one independent run per class, as the reference script is run once per class
      (`invert_runs.per_class`; images resized bicubic like it; with `workdir`, in `workdir/class{c}`).
    flip: probability of mirroring each example left-right (its mask with it); reference script: 0.5.
  Returns:
    (pipeline with the tokens added and their rows learned, {token: float32 vector}).
  """
  if not images_by_class:
    raise SpurjaxError("textual inversion: no images given")
  classes = sorted(int(c) for c in images_by_class)
  if steps < 1 or batch < 1 or grad_accum < 1:
    raise SpurjaxError(f"textual inversion: steps={steps}, batch={batch}, grad_accum={grad_accum} must be >= 1")
  if mode not in MODES:
    raise SpurjaxError(f"textual inversion: mode {mode!r} is not one of {', '.join(MODES)}")
  if not 0.0 <= float(flip) <= 1.0:
    raise SpurjaxError(f"textual inversion: flip={flip} must be a probability in [0, 1]")
  flip = float(flip)
  templates = _check_templates(templates)
  nouns = _per_class(nouns, classes, "nouns")
  inits = _per_class(nouns if initializer in (None, "") else initializer, classes, "initializer")
  tokens = [placeholder_fmt.format(c) for c in classes]
  res = model_resolution(pipeline)
  resample = "bicubic" if mode == "per_class" else "box_bicubic"
  pixels = {c: prepare_images(images_by_class[c], res, f"images of class {c}", resample) for c in classes}

  regions = None
  if masks_by_class is not None:
    if not pipeline.is_inpaint:
      raise SpurjaxError("textual inversion on masks needs an inpainting UNet ([noisy, mask, masked] input); "
                         f"{pipeline.path or 'this pipeline'} has a plain one")
    regions = {c: prepare_masks(masks_by_class.get(c), res, len(pixels[c]), f"masks of class {c}") for c in classes}
  mask_weight = float(mask_weight) if regions is not None else 1.0

  init_vecs = initial_vectors(pipeline, [inits[c] for c in classes])
  pipe, ids = add_tokens(pipeline, tokens, init_vecs)   # also checks the tokens are new and distinct
  mesh = runs.resolve_mesh(mesh, batch)
  kw = dict(lr=lr, batch=batch, grad_accum=grad_accum, weight_decay=weight_decay, mesh=mesh, mask_weight=mask_weight)
  if mode == "per_class":
    settings = {c: {"token": t, "noun": nouns[c], "initializer": inits[c], "images": int(len(pixels[c])),
                    "digest": _digest(pixels[c], None if regions is None else regions[c]), "steps": steps,
                    "batch": batch, "grad_accum": grad_accum, "lr": lr, "weight_decay": weight_decay,
                    "templates": list(templates), "resolution": res, "seed": seed, "flip": flip,
                    "mask_weight": mask_weight} for c, t in zip(classes, tokens)}
    prompts = {c: [t.format(token=tok, noun=nouns[c]) for t in templates] for c, tok in zip(classes, tokens)}
    done = runs.per_class(pipeline, classes, dict(zip(classes, tokens)), dict(zip(classes, init_vecs)), prompts,
                          pixels, regions, settings, steps=steps, seed=seed, flip=flip, workdir=workdir,
                          log_every=log_every, ckpt_every=ckpt_every, **kw)
    out, _ = add_tokens(pipeline, tokens, [done[c]["vector"] for c in classes])
    histories = {c: done[c]["history"] for c in classes}
    eff_lr = float(lr) * batch * grad_accum
  else:
    # Every (image, class) pair; prompts for every (template, class).
    images = np.concatenate([pixels[c] for c in classes])
    labels = np.concatenate([np.full(len(pixels[c]), k, np.int32) for k, c in enumerate(classes)])
    region = None if regions is None else np.concatenate([regions[c] for c in classes])
    prompt_ids = np.stack([tok_lib.encode(pipe.tokenizer, [t.format(token=tokens[k], noun=nouns[c])
                                                           for k, c in enumerate(classes)]) for t in templates])
    for k, c in enumerate(classes):
      if ids[k] not in prompt_ids[:, k]:
        raise SpurjaxError(f"textual inversion: token {tokens[k]} is cut off by the tokenizer's max length "
                           f"{prompt_ids.shape[-1]}; shorten the templates")
    trainer = runs.make_trainer(pipe, ids, **kw)
    batch_fn = runs.batch_maker(images, labels, prompt_ids, region, batch=batch, seed=seed,
                                template_key=(seed, rng_ids.INVERT_TEMPLATE), flip=flip)
    state, history = runs.fit(trainer, pipe, batch_fn, micro_steps=steps * grad_accum, rng=jax.random.key(seed),
                              workdir=workdir, desc="textual inversion", log_every=log_every, ckpt_every=ckpt_every)
    out = dataclasses.replace(pipe, text_params=jax.tree.map(np.asarray, state.params["text"]))
    histories, eff_lr = {None: history}, trainer.eff_lr
  learned = np.asarray(out.text_params["embeddings"]["token_embedding"]["embedding"])
  embeddings = {t: learned[i].astype(np.float32) for t, i in zip(tokens, ids)}
  if workdir and jax.process_index() == 0:
    _write_outputs(workdir, embeddings, classes, tokens, histories, info={
        "tokens": {t: {"class": c, "noun": nouns[c], "initializer": inits[c], "images": int(len(pixels[c]))}
                   for c, t in zip(classes, tokens)},
        "mode": mode, "steps": steps, "batch": batch, "grad_accum": grad_accum, "lr": lr, "effective_lr": eff_lr,
        "templates": list(templates), "flip": flip, "resolution": res, "seed": seed,
        "masks": "given" if regions is not None else "full image", "mask_weight": mask_weight})
  return out, embeddings


def _digest(pixels: np.ndarray, region: np.ndarray | None) -> str:
  """Short hash of a class's prepared images (and masks): a per-class folder is reused only for the same."""
  h = hashlib.sha256(np.ascontiguousarray(pixels).tobytes())
  if region is not None:
    h.update(np.ascontiguousarray(region).tobytes())
  return h.hexdigest()[:16]


def _write_outputs(workdir: str, embeddings: dict, classes, tokens, histories: dict, info: dict) -> None:
  """learned_embeds.safetensors (all tokens), one file per class, tokens.json; per_class: loss.jsonl of all."""
  os.makedirs(workdir, exist_ok=True)
  save_learned_embeds(embeddings, os.path.join(workdir, EMBEDS_FILE))
  for c, t in zip(classes, tokens):
    save_learned_embeds({t: embeddings[t]}, os.path.join(workdir, f"learned_embeds_class{c}.safetensors"))
  if None in histories:      # joint: dtrain.train appended loss.jsonl itself
    info["final_loss"] = histories[None][-1]["loss"] if histories[None] else None
  else:
    finals = {c: h[-1]["loss"] if h else None for c, h in histories.items()}
    for c, t in zip(classes, tokens):
      info["tokens"][t].update(final_loss=finals[c], folder=f"class{c}")
    known = [v for v in finals.values() if v is not None]
    info["final_loss"] = float(np.mean(known)) if known else None
    with open(os.path.join(workdir, "loss.jsonl"), "w") as f:
      for c in classes:
        for rec in histories[c]:
          f.write(json.dumps({"class": c, **rec}) + "\n")
  with open(os.path.join(workdir, "tokens.json"), "w") as f:
    json.dump(info, f, indent=2)


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
      seed=int(cfg.seed), workdir=workdir,
      templates=inv.templates if isinstance(inv.templates, str) else tuple(inv.templates) or DEFAULT_TEMPLATES,
      log_every=int(inv.log_every), ckpt_every=int(inv.ckpt_every), mode=str(inv.mode),
      flip=float(inv.flip))
  print(f"invert: learned {', '.join(embeddings)} -> {os.path.join(workdir, EMBEDS_FILE)}", flush=True)
  return embeddings


def main(argv: Sequence[str] | None = None) -> int:
  from spurjax.config_util import config_from, parse_command
  args, overrides = parse_command(argv, "spurjax invert")
  run(config_from(args.config, overrides), args.workdir)
  return 0
