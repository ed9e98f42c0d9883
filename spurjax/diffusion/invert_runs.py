"""Textual inversion's training runs (used by `spurjax.diffusion.invert.learn_tokens`).

- `flips` / `flip_rows`: the random horizontal mirror of each example, from the stream
  [seed, INVERT_FLIP, class, micro-step], applied to the pixels and to their masks alike.
- `batch_maker`: micro-step -> batch (images in per-epoch permutations, a template per example).
- `Trainer` / `fit`: the optimiser and jitted step that learn given rows of the token table,
  and one resumable run of them in a folder (checkpoints in `folder/ckpt`, `folder/loss.jsonl`).
- `per_class`: the per-class mode, one independent run per class as the reference script does:
  a pipeline that knows only that class's token, its own optimiser state, only its images, and
  its own folder `class{c}/` (a killed run resumes there; a finished class is read back, not redone).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from spurjax import rng as rng_ids
from spurjax import sharding as shd
from spurjax.diffusion import clip_text, tokenizer as tok_lib, train as dtrain
from spurjax.diffusion.token_embeds import add_tokens, read_learned_embeds, save_learned_embeds
from spurjax.errors import SpurjaxError

PATHS = (dtrain.TOKEN_EMBEDDING,)
_EMBED_KEY = "/".join(dtrain.TOKEN_EMBEDDING)
SETTINGS_FILE = "settings.json"   # per-class folder: written at its start, compared when a run comes back
DONE_FILE = "tokens.json"         # per-class folder: written last, so its presence means the class is done


# ----------------------------------------------------------------------------- batches


def flips(seed: int, step: int, n: int, p: float, cls: int | None = None) -> np.ndarray:
  """Which of the `n` examples of micro-step `step` are mirrored: each with probability `p`, drawn
  from [seed, INVERT_FLIP, (cls,) step] so a seed gives the same flips whatever else changes."""
  if p <= 0:
    return np.zeros(n, bool)
  key = [seed, rng_ids.INVERT_FLIP, step] if cls is None else [seed, rng_ids.INVERT_FLIP, cls, step]
  return np.random.default_rng(key).random(n) < p


def flip_rows(x: np.ndarray, which: np.ndarray) -> np.ndarray:
  """`x` (N, H, W[, C]) with the rows where `which` is True mirrored left-right (a copy)."""
  x = np.array(x)
  x[which] = x[which][:, :, ::-1]
  return x


def batch_maker(images: np.ndarray, labels: np.ndarray, prompt_ids: np.ndarray, region: np.ndarray | None, *,
                batch: int, seed: int, template_key: Sequence[int], flip: float = 0.0,
                cls: int | None = None) -> Callable[[int], dict]:
  """micro-step i -> {"pixels", "ids"[, "masks"]}: images `sample_batch_indices`, one template per example
  from [*template_key, i] (prompt_ids is (templates, labels, L)), and with `flip` > 0 mirrored pixels
  (and masks) from `flips(seed, i, batch, flip, cls)`."""
  def batch_fn(i: int) -> dict:
    idx = dtrain.sample_batch_indices(len(images), batch, seed, i)
    t = np.random.default_rng([*template_key, i]).integers(len(prompt_ids), size=batch)
    out = {"pixels": images[idx], "ids": prompt_ids[t, labels[idx]]}
    if region is not None:
      out["masks"] = region[idx]
    if flip > 0:
      which = flips(seed, i, batch, flip, cls)
      out["pixels"] = flip_rows(out["pixels"], which)
      if region is not None:
        out["masks"] = flip_rows(out["masks"], which)
    return out
  return batch_fn


# ----------------------------------------------------------------------------- one run


def resolve_mesh(mesh, batch: int):
  """The given mesh (batch must divide over it) or one over gcd(batch, devices) local devices."""
  if mesh is None:
    return shd.make_mesh(jax.devices()[:math.gcd(batch, jax.device_count())])
  if batch % mesh.devices.size:
    raise SpurjaxError(f"textual inversion: batch={batch} is not divisible by the {mesh.devices.size} devices")
  return mesh


@dataclasses.dataclass
class Trainer:
  """AdamW (b1 0.9, b2 0.999, constant lr) and the jitted step for the given rows of one table shape."""
  tx: object
  step_fn: Callable
  eff_lr: float
  mesh: object


def make_trainer(pipe, ids: Sequence[int], *, lr: float, batch: int, grad_accum: int, weight_decay: float, mesh,
                 mask_weight: float) -> Trainer:
  """Only rows `ids` of the token table train (gradient, update and decay of the others are zero);
  the lr is scaled by batch x accumulation (the reference's --scale_lr)."""
  row_mask = np.zeros(clip_text.vocab_size_of(pipe.text_params), bool)
  row_mask[list(ids)] = True
  masks = {_EMBED_KEY: row_mask}
  eff_lr = float(lr) * batch * grad_accum
  tx = dtrain.make_tx(lr=eff_lr, optimizer="adamw", weight_decay=weight_decay, grad_accum=grad_accum,
                      row_masks=masks)
  step_fn = dtrain.make_train_step(dtrain.Model.from_pipeline(pipe), tx, PATHS, mesh, row_masks=masks,
                                   grad_accum=grad_accum, mask_weight=mask_weight)
  return Trainer(tx, step_fn, eff_lr, mesh)


def fit(trainer: Trainer, pipe, batch_fn, *, micro_steps: int, rng, workdir: str | None, desc: str,
        log_every: int, ckpt_every: int):
  """Runs (or resumes in `workdir`) `micro_steps` steps from `pipe`'s table: (final state, history)."""
  state = dtrain.init_state(dtrain.pipeline_params(pipe), PATHS, trainer.tx)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  return dtrain.train(trainer.step_fn, state, batch_fn, steps=micro_steps, mesh=trainer.mesh, rng=rng,
                      workdir=workdir, desc=desc, log_every=log_every, ckpt_every=ckpt_every, paths=PATHS,
                      log_file=os.path.join(workdir, "loss.jsonl") if workdir else None)


def token_table(state) -> np.ndarray:
  return np.asarray(state.params["text"]["embeddings"]["token_embedding"]["embedding"])


# ----------------------------------------------------------------------------- per class


def _write_json(obj, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)   # atomic: a killed write leaves no half file


def _check_settings(folder: str, settings: dict) -> None:
  """A folder begun by a run with other settings is an error, not silently mixed in."""
  path = os.path.join(folder, SETTINGS_FILE)
  if not os.path.isfile(path):
    return
  with open(path) as f:
    old = json.load(f)
  diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
  if diff:
    raise SpurjaxError(f"textual inversion: {folder} holds a run with other settings ({', '.join(diff)}); "
                       f"remove it or use another workdir")


def per_class(pipeline, classes: Sequence[int], tokens: Mapping[int, str], init_vectors: Mapping[int, np.ndarray],
              prompts: Mapping[int, Sequence[str]], pixels: Mapping[int, np.ndarray],
              regions: Mapping[int, np.ndarray] | None, settings: Mapping[int, dict], *, steps: int, lr: float,
              batch: int, grad_accum: int, weight_decay: float, mesh, seed: int, flip: float,
              mask_weight: float, workdir: str | None, log_every: int, ckpt_every: int) -> dict[int, dict]:
  """One independent run per class; returns {class: {"vector", "history"}}.

  Each run adds only its class's token to `pipeline` (so every run has the same table shape and
  shares one compiled step), trains that row alone on the class's images and prompts, with noise
  from fold_in(key(seed), class) and templates / flips from streams keyed by (seed, class, step).
  With `workdir`, class c's checkpoints, loss.jsonl and results live in `workdir/class{c}`.
  """
  trainer, out = None, {}
  is_main = jax.process_index() == 0
  for c in classes:
    folder = os.path.join(workdir, f"class{c}") if workdir else None
    embeds = os.path.join(folder, f"learned_embeds_class{c}.safetensors") if folder else None
    if folder:
      _check_settings(folder, settings[c])
      if os.path.isfile(os.path.join(folder, DONE_FILE)):   # finished before: read back, not redone
        with open(os.path.join(folder, DONE_FILE)) as f:
          done = json.load(f)
        out[c] = {"vector": read_learned_embeds(embeds)[tokens[c]], "history": done["history"]}
        continue
      if is_main:
        os.makedirs(folder, exist_ok=True)
        _write_json(dict(settings[c]), os.path.join(folder, SETTINGS_FILE))
    pipe, (tid,) = add_tokens(pipeline, [tokens[c]], [init_vectors[c]])
    prompt_ids = tok_lib.encode(pipe.tokenizer, list(prompts[c]))[:, None]   # (templates, 1, L)
    if not (prompt_ids == tid).any(-1).all():
      raise SpurjaxError(f"textual inversion: token {tokens[c]} is cut off by the tokenizer's max length "
                         f"{prompt_ids.shape[-1]}; shorten the templates")
    if trainer is None:
      trainer = make_trainer(pipe, [tid], lr=lr, batch=batch, grad_accum=grad_accum, weight_decay=weight_decay,
                             mesh=mesh, mask_weight=mask_weight)
    images = pixels[c]
    region = None if regions is None else regions[c]
    batch_fn = batch_maker(images, np.zeros(len(images), np.int64), prompt_ids, region, batch=batch, seed=seed,
                           template_key=(seed, rng_ids.INVERT_TEMPLATE, c), flip=flip, cls=c)
    state, history = fit(trainer, pipe, batch_fn, micro_steps=steps * grad_accum,
                         rng=jax.random.fold_in(jax.random.key(seed), c), workdir=folder,
                         desc=f"textual inversion, class {c}", log_every=log_every, ckpt_every=ckpt_every)
    vector = token_table(state)[tid].astype(np.float32)
    out[c] = {"vector": vector, "history": history}
    if folder and is_main:
      tmp = embeds + ".tmp"
      save_learned_embeds({tokens[c]: vector}, tmp)
      os.replace(tmp, embeds)
      _write_json({"class": c, "token": tokens[c], "history": history,
                   "final_loss": history[-1]["loss"] if history else None}, os.path.join(folder, DONE_FILE))
  return out
