"""The three generators of the inpaint stage, each writing its edits into the stage folder:
`diffusion` (the learned tokens inpainted by the diffusion model), `paste` (another selected image's
object cut out by its mask and pasted in place of the erased object) and `redraw` (the built-in
benchmark only: the source scene drawn again by its renderer with an object of the other class, a
perfect counterfactual and so the ceiling of every generator). The model-free two save each edit's
changed region as `inpaint/masks/...`, which the prune stage then scores.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from spurjax.ddb.images import diffusion_size
from spurjax.ddb.inpaint.generate import iter_counterfactuals
from spurjax.ddb.inpaint.prompts import Edit, plan_edits
from spurjax.ddb.nouns import nouns_for
from spurjax.diffusion import guidance
from spurjax.errors import SpurjaxError


def edit_file(table_index: int, edit: Edit) -> str:
  return f"images/{table_index}_to{edit.target_class}_s{edit.sample}.png"


def _write_png(path: str, img: np.ndarray) -> None:
  from spurjax.data.images import save_png
  tmp = path + ".tmp.png"
  save_png(tmp, img)
  os.replace(tmp, path)


def _row(table, i: int, e: Edit, name: str, mask_name: str = "") -> dict:
  return {"source_index": i, "source_file": str(table.refs[i]), "source_class": e.source_class,
          "target_class": e.target_class, "sample": e.sample, "file": name, "mask_file": mask_name}


def inpaint_pipeline(ctx, tokens):
  """The pipeline that inpaints: the inverted one, or the second model (`diffusion.inpaint_path`) with the
  learned token rows moved into its text encoder."""
  if not ctx.separate_inpainter:
    return tokens.pipeline
  from spurjax.diffusion.token_embeds import transfer_tokens
  # Only the first model's tokenizer and text encoder are needed from here on: its UNet and VAE
  # are let go before the second model loads (two SD-2-sized models do not fit a 24 GiB host).
  tokens.pipeline = dataclasses.replace(tokens.pipeline, unet_params=None, vae_params=None)
  ctx.release_pipeline()
  return transfer_tokens(tokens.pipeline, ctx.load_inpaint_pipeline(), tokens.embeds_file,
                         where=(str(ctx.cfg.diffusion.path), ctx.inpaint_dir))


def sources_at(ctx, indices, size) -> np.ndarray | None:
  """The selected images read from their files at the diffusion model's (square) resolution, through
  the classifier's deterministic crop but not its smaller base size (None for a non-square model)."""
  if int(size[0]) != int(size[1]):
    return None
  from spurjax.data.pipeline import base_image_at
  from spurjax.train.loop import preprocess_from_config
  pp = preprocess_from_config(ctx.cfg)
  return np.stack([base_image_at(ctx.table.image(int(i)), pp, int(size[0])) for i in indices])


def generator_settings(ctx) -> dict:
  """The `iter_counterfactuals` keywords that the config's `ddb.*` keys set (all but samples and seed)."""
  d = ctx.cfg.ddb.inpaint
  return dict(mode=str(d.mode), num_steps=int(d.num_steps), guidance_scale=float(d.guidance_scale),
              mesh=ctx.mesh, template=str(d.template), sampler=str(d.sampler),
              batch_size=int(d.batch_size), num_classes=int(ctx.table.num_classes),
              paste=bool(d.paste), attributes=tuple(d.attributes), eta=float(d.eta), strength=float(d.strength),
              guidance_interval=guidance.check_guidance_interval(tuple(d.guidance_interval)))


def diffuse_all(ctx, folder, tokens, images, masks, indices, source_classes) -> list[dict]:
  """The diffusion generator: each edit inpainted with its target class's prompt, chunk by chunk."""
  cfg, table, d = ctx.cfg, ctx.table, ctx.cfg.ddb
  main = jax.process_index() == 0

  def done(c, edits):
    return all(os.path.isfile(os.path.join(folder, edit_file(indices[e.source], e))) for e in edits)

  rows = []
  pipeline = inpaint_pipeline(ctx, tokens)
  for _, edits, imgs in iter_counterfactuals(
      pipeline, images, masks, source_classes, tokens.tokens, nouns_for(cfg, table),
      n_samples=int(d.inpaint.n_samples), seed=int(cfg.seed), skip=done, desc="inpaint",
      model_images=sources_at(ctx, indices, diffusion_size(pipeline)), **generator_settings(ctx)):
    for n, e in enumerate(edits):
      i = indices[e.source]
      name = edit_file(i, e)
      if imgs is not None and main:
        _write_png(os.path.join(folder, name), np.round(imgs[n] * 255.0).astype(np.uint8))
      rows.append(_row(table, i, e, name))
  return rows


def paste_all(ctx, folder, images, masks, donor_masks, indices, source_classes) -> list[dict]:
  """The paste generator: each edit is the source with its object (`masks`) erased and the object of
  another selected image of the target class, cut by that image's `donor_masks`, pasted in its place.
  The changed region (erased | pasted) is saved as the edit's mask."""
  from spurjax.ddb.inpaint import paste
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


def redraw_all(ctx, folder, images, indices, source_classes) -> list[dict]:
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
      info, index, old = redraw_source(table, i)
      image, new = synth.redraw(info, index, e.target_class, int(table.place[i]),
                                (int(ctx.cfg.seed), index, e.target_class, e.sample))
      image, base = base_image(image, pp), images[e.source]
      objects = base_image(np.repeat((old | new)[..., None].astype(np.uint8) * 255, 3, axis=-1), pp)[..., 0] > 0
      _write_png(os.path.join(folder, name), image)
      _write_png(os.path.join(folder, mask_name), objects | (image != base).any(-1))   # last: marks the edit done
    rows.append(_row(table, i, e, name, mask_name))
  return rows


def redraw_source(table, i: int):
  """(classes.json, benchmark index, object mask) of table row i, checked to be what the built-in
  benchmark's renderer draws (else a one-line error)."""
  from spurjax.data import synth
  info, index = synth.image_origin(table.refs[i])
  image, mask = synth.redraw(info, index, int(table.y[i]), int(table.place[i]))
  if not np.array_equal(image, table.image(i)):
    raise SpurjaxError(f"ddb.inpaint.generator=redraw: {table.refs[i]} is not what its benchmark's renderer draws "
                       "(not written by `spurjax data synth`, or by another version of it)")
  return info, index, mask
