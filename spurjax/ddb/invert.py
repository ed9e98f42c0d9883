"""Stage invert: one textual-inversion token per class, learned on the selected majority images.

Core: `spurjax.diffusion.invert.learn_tokens`. The stage is complete when
`invert/learned_embeds.safetensors` and `invert/tokens.json` exist; a rerun loads them (and a
killed run resumes from the inversion's own checkpoint). `ddb.invert_steps = 0` learns no
token: prompts then use the class noun alone (the initialiser-token ablation).
"""
from __future__ import annotations

import json
import os

import numpy as np

from spurjax.diffusion import invert as inv
from spurjax.ddb.select import selected_indices


def device_batch(batch: int, accum: int, devices: int) -> tuple[int, int]:
  """(per-step batch, accumulation) keeping batch * accum when possible, batch divisible by devices."""
  total = batch * accum
  b = -(-batch // devices) * devices
  return b, max(1, total // b)


def run_invert(ctx, selected, nouns) -> dict[int, str]:
  """Returns {class: token string} and leaves `ctx.pipeline` holding the learned tokens."""
  d = ctx.cfg.ddb
  pipeline = ctx.load_pipeline()
  steps = int(d.invert_steps)
  if steps <= 0:
    return {c: "" for c in range(ctx.table.num_classes)}
  out = ctx.stage_dir("invert")
  embeds = os.path.join(out, inv.EMBEDS_FILE)
  info = os.path.join(out, "tokens.json")
  if not (os.path.isfile(embeds) and os.path.isfile(info)):
    idx = selected_indices(selected)
    images = {c: np.stack([ctx.table.image(int(i)) for i in idx[c]]) for c in sorted(idx)}
    batch, accum = device_batch(int(d.invert_batch), int(d.invert_accum), ctx.mesh.devices.size)
    inv.learn_tokens(pipeline, images, list(nouns), steps=steps, lr=float(d.invert_lr), batch=batch,
                     grad_accum=accum, seed=int(ctx.cfg.seed), workdir=out, mesh=ctx.mesh)
  with open(info) as f:
    tokens = json.load(f)["tokens"]
  ctx.pipeline = inv.load_learned_embeds(pipeline, embeds)
  return {int(v["class"]): t for t, v in tokens.items()}
