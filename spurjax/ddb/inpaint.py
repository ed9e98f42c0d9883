"""Stage inpaint: replace the causal object of each majority image by another class's.

For every selected image of class i, every other class j and every sample s, the masked
region is repainted with the prompt `template.format(token=<c_j>, noun=noun_j)`
("a photo of a <c_j> bird"); the result is labelled j. Images go to the diffusion
model as un-normalised RGB in [0, 1] at its native resolution (UNet sample_size x
VAE scale factor), and come back resized to the source image's size. With `paste`
(default) the generated pixels are pasted into the original image through the mask,
so the background is exactly the original one whatever the model's codec error.

Modes: "blended" (blended latents, a plain 4-channel UNet or a pixel-space model),
"channels" (an inpainting UNet taking [z_t, mask, masked-image latents], 9 channels for
SD), "auto" (channels when the UNet takes them, else blended).

Edits are processed in chunks of `batch_size` rows, each sharded over the mesh; chunk c
draws its noise from fold_in(key(seed), c) (row r of the chunk: fold_in of that by r),
so results depend on (seed, batch_size) only, and a resumed run equals an uninterrupted one.

Artefact `Edits`; on disk `inpaint/images/<index>_to<j>_s<s>.png` and `inpaint/edits.csv`
with columns source_index, source_file, source_class, target_class, sample, file (relative to
`inpaint/`), written chunk by chunk (a killed run resumes from the chunks it wrote).

Two generators need no diffusion model (`ddb.inpaint.generator`): `paste` (another selected image's object
cut out by its mask and pasted in place of the erased object) and `redraw` (the built-in benchmark
only: the source scene drawn again by the benchmark's renderer with an object of the other class, a
perfect counterfactual and so the ceiling of every generator); both save each edit's changed region
as `inpaint/masks/...`, which the prune stage then scores.

Config keys (`cfg.ddb`): n_samples, inpaint_mode, num_steps, guidance_scale, template, nouns,
attributes, inpaint_sampler, inpaint_eta, inpaint_batch_size, inpaint_paste; the seed is `cfg.seed`. With
`attributes` (e.g. colour words) each edit's prompt also names one of them, drawn from
(seed, image, target class, sample): "a photo of a red flower".
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from spurjax import distributed
from spurjax.diffusion import sampling, schedulers
from spurjax.ddb.nouns import nouns_for
from spurjax.errors import SpurjaxError
from spurjax.stages import Stage

STAGE = "inpaint"
CSV_COLUMNS = ("source_index", "source_file", "source_class", "target_class", "sample", "file", "mask_file")
GENERATORS = ("diffusion", "paste", "redraw")
# Generators that use no diffusion model (no tokens, no prompts, no model identity in the fingerprint).
MODEL_FREE = ("paste", "redraw")
MODES = ("blended", "channels", "auto")



# ---------------------------------------------------------------- image helpers


def diffusion_size(pipeline) -> tuple[int, int]:
  """(height, width) of the images the pipeline works at: UNet sample_size x VAE scale factor."""
  config = dict(getattr(pipeline.unet, "config", {}) or {})
  s = config.get("sample_size")
  if s is None:
    raise SpurjaxError("diffusion model: unet config has no sample_size, so its resolution is unknown")
  h, w = (s, s) if isinstance(s, int) else tuple(s)
  f = int(getattr(pipeline, "vae_scale_factor", 1) or 1) if getattr(pipeline, "vae", None) is not None else 1
  return int(h) * f, int(w) * f


@functools.partial(jax.jit, static_argnums=1)
def _resize(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.image.resize(x, shape, method="linear")


def resize_images(images, size: Sequence[int]) -> np.ndarray:
  """Float NHWC images resized (bilinear, antialiased) to `size` = (h, w); the identity at the same size."""
  images = np.asarray(images, np.float32)
  h, w = int(size[0]), int(size[1])
  if images.shape[1:3] == (h, w):
    return images
  return np.asarray(_resize(jnp.asarray(images), (images.shape[0], h, w, images.shape[3])))


def resize_masks(masks, size: Sequence[int]) -> np.ndarray:
  """Boolean (B, H, W) masks resized to `size` (bilinear, then >= 0.5)."""
  masks = np.asarray(masks)
  h, w = int(size[0]), int(size[1])
  if masks.shape[1:3] == (h, w):
    return masks.astype(bool)
  return resize_images(masks.astype(np.float32)[..., None], (h, w))[..., 0] >= 0.5


def to_float_images(images) -> np.ndarray:
  """uint8 (0..255) or float (0..1) NHWC RGB as float32 in [0, 1]."""
  a = np.asarray(images)
  if a.ndim != 4 or a.shape[-1] != 3:
    raise SpurjaxError(f"images: expected (B, H, W, 3) RGB, got shape {a.shape}")
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  a = a.astype(np.float32)
  if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
    raise SpurjaxError(f"images: float values must be in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
  return np.clip(a, 0.0, 1.0)


# ---------------------------------------------------------------- prompts and the plan


@dataclasses.dataclass(frozen=True)
class Edit:
  """One counterfactual: image `source` (a position in the inputs) of class `source_class`, repainted as
  `target_class`, sample number `sample`."""
  source: int
  source_class: int
  target_class: int
  sample: int


def plan_edits(source_classes, num_classes: int, n_samples: int, same_class: bool = False) -> list[Edit]:
  """Every (image, other class, sample), ordered by image, then target class, then sample.

  With `same_class`, every (image, its own class, sample) instead: re-inpaints that keep the label
  (controls that carry the generator's artefacts without a change of class)."""
  if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
    raise SpurjaxError(f"config ddb.inpaint.n_samples={n_samples!r} must be a positive integer")
  if num_classes < 2:
    raise SpurjaxError(f"inpaint: needs at least 2 classes, got {num_classes}")
  out = []
  for b, c in enumerate(np.asarray(source_classes).reshape(-1)):
    c = int(c)
    if not 0 <= c < num_classes:
      raise SpurjaxError(f"inpaint: source class {c} of image {b} is not in 0..{num_classes - 1}")
    targets = [c] if same_class else [j for j in range(num_classes) if j != c]
    out += [Edit(b, c, j, s) for j in targets for s in range(int(n_samples))]
  return out


def _lookup(table, c: int, what: str):
  if isinstance(table, Mapping):
    for key in (c, str(c)):
      if key in table:
        return table[key]
    raise SpurjaxError(f"inpaint: no {what} for class {c}")
  if c >= len(table):
    raise SpurjaxError(f"inpaint: {len(table)} {what}s given for class {c}")
  return table[c]


def class_prompts(template: str, tokens, nouns, num_classes: int, attributes: Sequence[str] = ()) -> list[str]:
  """The prompts of each target class: `template` with {token} and {noun} filled in.

  A class whose token is None or "" gets the prompt without a token (no textual inversion); with
  no tokens at all (None or empty) every class does. With `attributes` (e.g. colour words) there
  are A prompts per class, class-major (prompt c * A + a), the template's {attribute} filled with
  attribute a and {a_attribute} with it and its article ("a red", "an orange").
  """
  if "{noun}" not in template and "{token}" not in template:
    raise SpurjaxError(f"config ddb.inpaint.template={template!r} must contain {{token}} and/or {{noun}}")
  attributes = tuple(str(a) for a in attributes)
  uses = "{attribute}" in template or "{a_attribute}" in template
  if uses != bool(attributes):
    raise SpurjaxError(f"config ddb.inpaint.template={template!r} and ddb.inpaint.attributes={list(attributes)}: the template uses "
                       "{attribute} / {a_attribute} exactly when attributes are given")
  out = []
  for c in range(num_classes):
    token = _lookup(tokens, c, "token") if tokens else ""
    noun = _lookup(nouns, c, "noun")
    for a in attributes or ("",):
      article = ("an " if a[:1].lower() in "aeiou" else "a ") + a if a else ""
      try:
        text = template.format(token=token or "", noun=noun, attribute=a, a_attribute=article)
      except (KeyError, IndexError, ValueError) as e:
        raise SpurjaxError(f"config ddb.inpaint.template={template!r}: {type(e).__name__} {e} (use {{token}}, {{noun}}, "
                           "{attribute}, {a_attribute})") from None
      out.append(" ".join(text.split()))
  return out


def attribute_of(seed: int, edit: "Edit", num_attributes: int) -> int:
  """The attribute (0 .. A-1) an edit's prompt takes: a function of (seed, source, target, sample) only."""
  if num_attributes <= 1:
    return 0
  ss = np.random.SeedSequence([int(seed), 0xA77, edit.source, edit.target_class, edit.sample])
  return int(ss.generate_state(1)[0] % num_attributes)


def check_tokens(pipeline, tokens) -> None:
  """Fails loudly if a learned token is missing from the tokenizer or the text encoder's embedding table.

  Without this check a textual-inversion embedding that failed to load would be tokenised as
  its characters and the edit would run silently without it.
  """
  if tokens is None:
    return
  items = tokens.items() if isinstance(tokens, Mapping) else enumerate(tokens)
  tokenizer = pipeline.tokenizer
  vocab = tokenizer.get_vocab()
  rows = None
  if getattr(pipeline, "text_params", None) is not None:
    from spurjax.diffusion import clip_text
    rows = clip_text.vocab_size_of(pipeline.text_params)
  for c, t in items:
    if not t:
      continue
    if not isinstance(t, str):
      raise SpurjaxError(f"inpaint: token of class {c} must be a string, got {type(t).__name__}")
    if t in vocab:
      if rows is not None and int(vocab[t]) >= rows:
        raise SpurjaxError(f"inpaint: token {t!r} of class {c} has id {vocab[t]} but the text encoder embeds "
                           f"only {rows} rows; the learned embedding was not loaded")
    elif t.startswith("<") or t.endswith(">"):
      raise SpurjaxError(f"inpaint: token {t!r} of class {c} is not in the tokenizer; the textual-inversion "
                         "embedding was not loaded")


def resolve_mode(mode: str, in_channels: int, latent_channels: int) -> str:
  """`ddb.inpaint.mode` for a UNet with `in_channels` inputs on `latent_channels` latents ("auto"
  resolved); a mode the UNet cannot run is a one-line SpurjaxError."""
  if mode not in MODES:
    raise SpurjaxError(f"config ddb.inpaint.mode={mode!r} must be one of {', '.join(MODES)}")
  inpaint_channels = 2 * latent_channels + 1
  if mode == "auto":
    mode = "channels" if in_channels == inpaint_channels else "blended"
  if mode == "channels" and in_channels != inpaint_channels:
    raise SpurjaxError(f"config ddb.inpaint.mode='channels' needs an inpainting UNet with {inpaint_channels} input "
                       f"channels (latents + mask + masked image); this one has {in_channels}: use 'blended'")
  if mode == "blended" and in_channels != latent_channels:
    raise SpurjaxError(f"config ddb.inpaint.mode='blended' needs a UNet with {latent_channels} input channels; "
                       f"this one has {in_channels} (an inpainting UNet): use 'channels'")
  return mode


def _resolve_mode(mode: str, fns: sampling.ModelFns) -> str:
  return resolve_mode(mode, fns.in_channels, fns.latent_channels)


# ---------------------------------------------------------------- generation


def iter_counterfactuals(pipeline, images, masks, source_classes, target_tokens, nouns, *, n_samples: int = 1,
                         mode: str = "blended", num_steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
                         mesh=None, template: str = "a photo of a {token} {noun}", sampler: str = "ddim",
                         batch_size: int = 8, num_classes: int | None = None, paste: bool = True,
                         skip=None, desc: str | None = "inpaint", attributes: Sequence[str] = (),
                         eta: float = 0.0, same_class: bool = False, strength: float = 1.0,
                         guidance_interval=None) -> Iterator[tuple[int, list[Edit], np.ndarray | None]]:
  """Yields (chunk index, its edits, float32 (n, H, W, 3) images in [0, 1]) chunk by chunk.

  Arguments as in `make_counterfactuals`; `skip(chunk_index, edits) -> bool` marks chunks that are
  already done (they are yielded with images None and not computed); `same_class`: each image is
  repainted with its own class's prompt instead (`plan_edits`).
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
  fns = sampling.pipeline_fns(pipeline)
  mode = _resolve_mode(mode, fns)
  if isinstance(batch_size, bool) or int(batch_size) < 1:
    raise SpurjaxError(f"config ddb.inpaint.batch_size={batch_size!r} must be a positive integer")
  devices = 1 if mesh is None else mesh.devices.size
  chunk = -(-int(batch_size) // devices) * devices
  chunks = [edits[i:i + chunk] for i in range(0, len(edits), chunk)]
  skip = skip or (lambda c, e: False)
  todo_mask = distributed.from_main(np.asarray([not skip(c, e) for c, e in enumerate(chunks)], np.int32))
  todo = {c for c in range(len(chunks)) if todo_mask[c]}
  prep = _prepare(pipeline, images, masks, target_tokens, nouns, num_classes, template, guidance_scale,
                  attributes) if todo else None
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
      "contexts": np.asarray(sampling.encode_prompts(pipeline, prompts)),
      "uncond": np.asarray(sampling.empty_context(pipeline)) if float(guidance_scale) != 1.0 else None,
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
      int(num_steps x strength) steps (`sampling.first_step`), keeping the source's coarse layout.
    guidance_interval: None, or (t_min, t_max): classifier-free guidance only at timesteps in that
      range, the conditional prediction alone elsewhere (`sampling.guidance_weights`).

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


# ---------------------------------------------------------------- stage


def edit_file(table_index: int, edit: Edit) -> str:
  return f"images/{table_index}_to{edit.target_class}_s{edit.sample}.png"


def read_edits(stage_dir: str) -> list[dict]:
  """The rows of `edits.csv` (ints parsed) with `path` = the absolute image path."""
  path = os.path.join(stage_dir, "edits.csv")
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: not found (stage inpaint has not finished)")
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or []) and c != "mask_file"]
    if missing:
      raise SpurjaxError(f"{path}: missing columns {missing}")
    for n, row in enumerate(reader, start=2):
      try:
        for k in ("source_index", "source_class", "target_class", "sample"):
          row[k] = int(row[k])
      except ValueError:
        raise SpurjaxError(f"{path}: row {n}: non-integer value") from None
      row["path"] = os.path.join(stage_dir, row["file"])
      row["mask_path"] = os.path.join(stage_dir, row["mask_file"]) if row.get("mask_file") else None
      rows.append(row)
  return rows


def _stage_masks(masks, indices, shape) -> np.ndarray:
  out = np.zeros((len(indices),) + tuple(shape), bool)
  for n, i in enumerate(indices):
    m = masks.get(int(i)) if isinstance(masks, Mapping) else None
    if m is None:
      raise SpurjaxError(f"inpaint: no mask for selected image {int(i)}")
    m = np.asarray(m)
    if m.shape != tuple(shape):
      m = resize_masks(m[None].astype(np.float32), shape)[0]
    out[n] = m.astype(bool) if m.dtype == bool else m >= 0.5
  return out


def _write_png(path: str, img: np.ndarray) -> None:
  from spurjax.data.images import save_png
  tmp = path + ".tmp.png"
  save_png(tmp, img)
  os.replace(tmp, path)


@dataclasses.dataclass
class Edits:
  """The stage's artefact: one row of `edits.csv` per counterfactual (ints parsed, `path` absolute)."""
  rows: list[dict]

  def __len__(self):
    return len(self.rows)


def compute(ctx, inputs, folder: str) -> None:
  """Generates the counterfactuals of the selected images into `folder` (chunks already there from a
  killed run with the same fingerprint are kept)."""
  from spurjax.ddb.select import selected_indices

  generator = str(ctx.cfg.ddb.inpaint.generator)
  if generator not in GENERATORS:
    raise SpurjaxError(f"config ddb.inpaint.generator={generator!r} must be one of {', '.join(GENERATORS)}")
  sel = selected_indices(inputs["select"])
  classes = sorted(sel)
  indices = [int(i) for c in classes for i in sel[c]]
  source_classes = [c for c in classes for _ in sel[c]]
  if not indices:
    raise SpurjaxError("inpaint: no selected images")
  main = jax.process_index() == 0
  if main:
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  images = np.stack([ctx.sources["eval"](i) for i in indices])
  stage_masks = _stage_masks(inputs["segment"].masks, indices, images.shape[1:3])
  if generator == "paste":   # donors are cut by the method's own masks, not their boxes
    donor_masks = _stage_masks(inputs["segment"].raw, indices, images.shape[1:3])
    rows = _paste_all(ctx, folder, images, stage_masks, donor_masks, indices, source_classes)
  elif generator == "redraw":
    rows = _redraw_all(ctx, folder, images, indices, source_classes)
  else:
    rows = _diffuse_all(ctx, folder, inputs["invert"], images, stage_masks, indices, source_classes)
  if main:
    with open(os.path.join(folder, "edits.csv.tmp"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
      writer.writeheader()
      writer.writerows(rows)
    os.replace(os.path.join(folder, "edits.csv.tmp"), os.path.join(folder, "edits.csv"))


def _row(table, i: int, e: Edit, name: str, mask_name: str = "") -> dict:
  return {"source_index": i, "source_file": str(table.refs[i]), "source_class": e.source_class,
          "target_class": e.target_class, "sample": e.sample, "file": name, "mask_file": mask_name}


def inpaint_pipeline(ctx, tokens):
  """The pipeline that inpaints: the inverted one, or the second model (`diffusion.inpaint_path`) with the
  learned token rows moved into its text encoder."""
  if not ctx.separate_inpainter:
    return tokens.pipeline
  from spurjax.diffusion.invert import transfer_tokens
  return transfer_tokens(tokens.pipeline, ctx.load_inpaint_pipeline(), tokens.embeds_file,
                         where=(str(ctx.cfg.diffusion.path), ctx.inpaint_dir))


def generator_settings(ctx) -> dict:
  """The `iter_counterfactuals` keywords that the config's `ddb.*` keys set (all but samples and seed)."""
  d = ctx.cfg.ddb.inpaint
  return dict(mode=str(d.mode), num_steps=int(d.num_steps), guidance_scale=float(d.guidance_scale),
              mesh=ctx.mesh, template=str(d.template), sampler=str(d.sampler),
              batch_size=int(d.batch_size), num_classes=int(ctx.table.num_classes),
              paste=bool(d.paste), attributes=tuple(d.attributes), eta=float(d.eta), strength=float(d.strength),
              guidance_interval=sampling.check_guidance_interval(tuple(d.guidance_interval)))


def _diffuse_all(ctx, folder, tokens, images, masks, indices, source_classes) -> list[dict]:
  """The diffusion generator: each edit inpainted with its target class's prompt, chunk by chunk."""
  cfg, table, d = ctx.cfg, ctx.table, ctx.cfg.ddb
  main = jax.process_index() == 0

  def done(c, edits):
    return all(os.path.isfile(os.path.join(folder, edit_file(indices[e.source], e))) for e in edits)

  rows = []
  for _, edits, imgs in iter_counterfactuals(
      inpaint_pipeline(ctx, tokens), images, masks, source_classes, tokens.tokens, nouns_for(cfg, table),
      n_samples=int(d.inpaint.n_samples), seed=int(cfg.seed), skip=done, desc="inpaint", **generator_settings(ctx)):
    for n, e in enumerate(edits):
      i = indices[e.source]
      name = edit_file(i, e)
      if imgs is not None and main:
        _write_png(os.path.join(folder, name), np.round(imgs[n] * 255.0).astype(np.uint8))
      rows.append(_row(table, i, e, name))
  return rows


def _paste_all(ctx, folder, images, masks, donor_masks, indices, source_classes) -> list[dict]:
  """The paste generator: each edit is the source with its object (`masks`) erased and the object of
  another selected image of the target class, cut by that image's `donor_masks`, pasted in its place.
  The changed region (erased | pasted) is saved as the edit's mask."""
  from spurjax.data.images import save_png
  from spurjax.ddb import paste
  table = ctx.table
  source_classes = np.asarray(source_classes)
  donors = {c: [(images[n], donor_masks[n]) for n in np.nonzero(source_classes == c)[0]] for c in set(source_classes)}
  edits = plan_edits(source_classes, int(table.num_classes), int(ctx.cfg.ddb.inpaint.n_samples))
  rows = []
  os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
  for k, e in enumerate(edits):
    i = indices[e.source]
    name = edit_file(i, e)
    mask_name = name.replace("images/", "masks/")
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(folder, mask_name)):
      out = paste.paste_edit(images[e.source], masks[e.source], donors.get(e.target_class, []),
                             seed=int(np.random.SeedSequence([int(ctx.cfg.seed), i, e.target_class, e.sample])
                                      .generate_state(1)[0]))
      _write_png(os.path.join(folder, name), out.image)
      _write_png(os.path.join(folder, mask_name), out.mask)   # last (atomic): marks the edit done
    rows.append(_row(table, i, e, name, mask_name))
  return rows


def _redraw_all(ctx, folder, images, indices, source_classes) -> list[dict]:
  """The redraw generator (the built-in benchmark only): each edit is its source image drawn again by the
  benchmark's renderer from the same random stream, so the scene is the same pixel for pixel, with an
  object of the target class (its own draws per edit). A perfect counterfactual: the ceiling of any
  generator. Like every generator's, its edits are base images (`images`, the sources as the input
  pipeline makes them); the changed region (old object | new object | any pixel that differs) is saved
  as the edit's mask."""
  from spurjax.data import synth
  from spurjax.data.pipeline import base_image
  from spurjax.train.loop import preprocess_from_config
  table = ctx.table
  pp = preprocess_from_config(ctx.cfg)   # the redraws are raw dataset images: cropped and resized as the sources
  edits = plan_edits(np.asarray(source_classes), int(table.num_classes), int(ctx.cfg.ddb.inpaint.n_samples))
  os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
  rows = []
  for e in edits:
    i = indices[e.source]
    name = edit_file(i, e)
    mask_name = name.replace("images/", "masks/")
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(folder, mask_name)):
      info, index, old = _redraw_source(table, i)
      image, new = synth.redraw(info, index, e.target_class, int(table.place[i]),
                                (int(ctx.cfg.seed), index, e.target_class, e.sample))
      image, base = base_image(image, pp), images[e.source]
      objects = base_image(np.repeat((old | new)[..., None].astype(np.uint8) * 255, 3, axis=-1), pp)[..., 0] > 0
      _write_png(os.path.join(folder, name), image)
      _write_png(os.path.join(folder, mask_name), objects | (image != base).any(-1))   # last: marks the edit done
    rows.append(_row(table, i, e, name, mask_name))
  return rows


def _redraw_source(table, i: int):
  """(classes.json, benchmark index, object mask) of table row i, checked to be what the built-in
  benchmark's renderer draws (else a one-line error)."""
  from spurjax.data import synth
  info, index = synth.image_origin(table.refs[i])
  image, mask = synth.redraw(info, index, int(table.y[i]), int(table.place[i]))
  if not np.array_equal(image, table.image(i)):
    raise SpurjaxError(f"ddb.inpaint.generator=redraw: {table.refs[i]} is not what its benchmark's renderer draws "
                       "(not written by `spurjax data synth`, or by another version of it)")
  return info, index, mask


def check_config(ctx) -> None:
  """Before any work: `ddb.inpaint.generator` is known; `ddb.inpaint.template` and `ddb.inpaint.attributes` make valid prompts,
  `ddb.inpaint.eta` is in [0, 1], `ddb.inpaint.strength` in (0, 1] and `ddb.inpaint.guidance_interval` () or
  (t_min, t_max) (diffusion generator); the data is the built-in benchmark (redraw)."""
  cfg = ctx.cfg
  if str(cfg.ddb.inpaint.generator) not in GENERATORS:
    raise SpurjaxError(f"config ddb.inpaint.generator={cfg.ddb.inpaint.generator!r} must be one of {', '.join(GENERATORS)}")
  if str(cfg.ddb.inpaint.generator) == "redraw":   # only the built-in benchmark can draw a scene again: on every process
    _redraw_source(ctx.table, 0)
  if str(cfg.ddb.inpaint.generator) in MODEL_FREE:
    return
  eta = cfg.ddb.inpaint.eta
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
    raise SpurjaxError(f"config ddb.inpaint.eta={eta!r} must be a number in [0, 1]")
  strength = cfg.ddb.inpaint.strength
  if isinstance(strength, bool) or not isinstance(strength, (int, float)):
    raise SpurjaxError(f"config ddb.inpaint.strength={strength!r} must be a number in (0, 1]")
  try:
    sampling.first_step(int(cfg.ddb.inpaint.num_steps), float(strength))
  except SpurjaxError as e:
    raise SpurjaxError(f"config ddb.inpaint.strength: {e}") from None
  try:
    sampling.check_guidance_interval(tuple(cfg.ddb.inpaint.guidance_interval))
  except (SpurjaxError, TypeError) as e:
    raise SpurjaxError(f"config ddb.inpaint.guidance_interval: {e}") from None
  class_prompts(str(cfg.ddb.inpaint.template), None, nouns_for(cfg, ctx.table), int(ctx.table.num_classes),
                tuple(cfg.ddb.inpaint.attributes))
  from spurjax.diffusion.model_dir import unet_channels
  key = "diffusion.inpaint_path" if ctx.separate_inpainter else "diffusion.path"
  in_channels, out_channels = unet_channels(ctx.inpaint_dir, key)
  try:
    resolve_mode(str(cfg.ddb.inpaint.mode), in_channels, out_channels)
  except SpurjaxError as e:
    raise SpurjaxError(f"{e} ({key} {ctx.inpaint_dir})") from None
  if ctx.separate_inpainter:   # the learned token rows must fit the second model's text encoder
    from spurjax.diffusion.invert import check_transferable
    unet_channels(ctx.diffusion_dir)
    check_transferable(ctx.diffusion_dir, ctx.inpaint_dir, where=(f"diffusion.path {ctx.diffusion_dir}",
                                                                  f"diffusion.inpaint_path {ctx.inpaint_dir}"))


def load(ctx, folder: str) -> Edits:
  return Edits(read_edits(folder))


STAGE = Stage(name="inpaint", groups=("ddb.inpaint",),
              shared=("seed", "diffusion.path", "diffusion.inpaint_path", "ddb.nouns"),
              upstream=("select", "invert", "segment"), compute=compute, load=load, validate=check_config,
              identity=lambda ctx: None if str(ctx.cfg.ddb.inpaint.generator) in MODEL_FREE else ctx.inpaint_digest)
