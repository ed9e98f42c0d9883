"""One process of the multi-process test: ERM, IG, inpainting, pruning and textual inversion; results to files.

  python tests/mp_worker.py OUT_DIR WORK_DIR

Joins a multi-process run when SPURJAX_COORDINATOR / SPURJAX_NUM_PROCESSES / SPURJAX_PROCESS_ID
are set (else runs alone). WORK_DIR is shared by every process; each writes its results to
OUT_DIR/p<process>_*.{json,npz}.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spurjax import distributed  # noqa: E402

distributed.maybe_initialize()  # before anything touches a jax backend

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers import toy_config, toy_table  # noqa: E402
from spurjax import sharding  # noqa: E402

CLIP = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
UNET = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
            attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), out_channels=3, sample_size=8, in_channels=3)
SCHED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
             set_alpha_to_one=False, clip_sample=False)
TOKENS = {0: "<c0>", 1: "<c1>"}
NOUNS = ("square", "square")


def flat(tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def train(cfg, table, workdir: str) -> tuple[dict, dict]:
  """ERM (report written by process 0), then a resumed `fit` that restores the finished run."""
  from spurjax.train import erm, loop
  rep = erm.run(cfg, os.path.join(workdir, "erm"), table=table)
  again = loop.fit(cfg, table, os.path.join(workdir, "erm"), name="erm")  # restores `last`: no epoch left
  if json.dumps(again, sort_keys=True) != json.dumps(rep, sort_keys=True):
    raise AssertionError("resumed fit returned a different report")
  variables = loop.load_best_variables(cfg, table, os.path.join(workdir, "erm"))
  return rep, variables


def attribute(cfg, table, mesh) -> dict:
  """IG of a freshly initialised classifier (the same on every run, unlike trained weights)."""
  from spurjax.ddb.prune import attribute as att
  from spurjax.train import loop
  model, variables = loop.init_variables(cfg, table, jax.random.PRNGKey(1))
  f = att.classifier_fn(model, variables, cfg.data.mean, cfg.data.std)
  rng = np.random.default_rng(3)
  orig = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
  edit = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
  masks = np.zeros((6, 16, 16), bool)
  masks[:, 4:12, 4:12] = True
  out = att.attribute_edits(f, orig, edit, masks, np.arange(6) % 2, n_steps=4, batch_size=4, mesh=mesh)
  return {"rho": out["rho"], "maps": out["maps"], "out_edit": out["out_edit"]}


def tiny_pipeline(directory: str, tokens=True):
  from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, unet as unet_lib
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(os.path.join(directory, "tok"),
                                                            vocab_size=CLIP["vocab_size"]))
  if tokens:
    tok_lib.add_placeholder_tokens(tok, list(TOKENS.values()))
  text = clip_text.resize_token_embeddings(clip_text.init_clip_params(CLIP, jax.random.key(1)), len(tok))
  return loading.Pipeline(unet=unet_lib.UNet2DConditionModel(UNET),
                          unet_params=unet_lib.init_unet_params(UNET, jax.random.key(0), sample_size=8),
                          text_encoder=clip_text.CLIPTextModel(CLIP), text_params=text, tokenizer=tok,
                          scheduler_config=SCHED)


def inpaint(cfg, table, workdir: str, local_dir: str, mesh) -> dict:
  """`make_counterfactuals` on 3 images, then the resumable inpaint stage (process 0 writes)."""
  from spurjax.ddb import inpaint as inp
  from spurjax.context import Context
  pipe = tiny_pipeline(local_dir)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
  masks = np.zeros((3, 8, 8), bool)
  masks[:, 2:6, 2:6] = True
  out = inp.make_counterfactuals(pipe, images, masks, [0, 1, 1], TOKENS, NOUNS, n_samples=2, num_steps=2,
                                 guidance_scale=2.0, batch_size=4, seed=5, mesh=mesh, desc=None)
  cfg.ddb.inpaint.num_steps = 2
  cfg.ddb.inpaint.n_samples = 1
  cfg.ddb.inpaint.batch_size = 4
  cfg.ddb.nouns = NOUNS
  from spurjax.ddb import invert as inv_stage, segment, select
  from spurjax.stages import Runner
  sel = select.Selection(k=2, selected={0: np.array([0, 1]), 1: np.array([30, 31])}, psi_ref={0: 1.0, 1: 1.0},
                         loss={})
  stage_masks = segment.Masks({i: np.pad(np.ones((8, 8), bool), 4) for c in sel.selected for i in sel.selected[c]},
                              {})
  cfg.diffusion.path = os.path.join(workdir, "in-memory")
  ctx = Context(cfg=cfg, workdir=os.path.join(workdir, "ddb"), table=table, mesh=mesh, pipeline=pipe)
  runner = Runner(ctx, verbose=False)
  runner.provide("select", sel, "given")
  runner.provide("segment", stage_masks, "given")
  runner.provide("invert", inv_stage.Tokens(TOKENS, pipe), "given")
  rows = runner.run(inp.STAGE).rows
  from spurjax.data.images import read_image
  stage = np.stack([read_image(r["path"]) for r in rows])
  return {"images": out["images"], "target_class": out["target_class"], "stage": stage}, (ctx, runner)


def invert(workdir: str, local_dir: str, mesh) -> dict:
  """Textual inversion (2 steps, batch 4 over the mesh); the learned rows."""
  from spurjax.diffusion import invert as inv
  pipe = tiny_pipeline(os.path.join(local_dir, "inv"), tokens=False)
  rng = np.random.default_rng(1)
  images = {c: rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8) for c in (0, 1)}
  _, emb = inv.learn_tokens(pipe, images, ["bird", "flower"], steps=2, batch=4, grad_accum=1, lr=5e-2, seed=0,
                            workdir=os.path.join(workdir, "invert"), mesh=mesh, log_every=1, ckpt_every=1)
  return {t.strip("<>"): v for t, v in emb.items()}


def prune(cfg, ctx, runner) -> dict:
  """The prune stage on the inpaint stage's edits (IG sharded over processes, process 0 writes)."""
  from spurjax.ddb.prune import stage as prune_stage
  from spurjax.train import loop
  from spurjax.train.erm import ErmResult
  cfg.ddb.prune.ig_steps, cfg.ddb.prune.ig_chunk, cfg.ddb.prune.ig_batch_size = 4, 0, 4
  cfg.ddb.prune.threshold = 0.0
  model, variables = loop.init_variables(cfg, ctx.table, jax.random.PRNGKey(1))
  runner.provide("erm", ErmResult({}, model, variables, ""), "given")
  out = runner.run(prune_stage.STAGE)
  kept, log = out.table, out.log
  return {"kept_y": kept.y, "kept_images": np.stack([kept.image(i) for i in range(len(kept))]) if len(kept) else
          np.zeros((0, 16, 16, 3), np.uint8),
          "rho": np.asarray([float(r["rho"]) for r in log]), "psi": np.asarray([float(r["psi"]) for r in log])}


def main(out_dir: str, workdir: str) -> None:
  t0 = time.time()
  p = jax.process_index()
  local_dir = os.path.join(workdir, f"local{p}")
  os.makedirs(local_dir, exist_ok=True)
  mesh = sharding.make_mesh()
  cfg, table = toy_config(), toy_table()
  seconds = {"start": time.time() - t0}
  rep, variables = train(cfg, table, workdir)
  seconds["train"] = time.time() - t0
  np.savez(os.path.join(out_dir, f"p{p}_params.npz"), **flat(variables))
  with open(os.path.join(out_dir, f"p{p}_report.json"), "w") as f:
    json.dump(rep, f)
  np.savez(os.path.join(out_dir, f"p{p}_ig.npz"), **attribute(cfg, table, mesh))
  seconds["ig"] = time.time() - t0
  got, stage = inpaint(cfg, table, workdir, local_dir, mesh)
  np.savez(os.path.join(out_dir, f"p{p}_inpaint.npz"), **got)
  seconds["inpaint"] = time.time() - t0
  np.savez(os.path.join(out_dir, f"p{p}_prune.npz"), **prune(cfg, *stage))
  seconds["prune"] = time.time() - t0
  np.savez(os.path.join(out_dir, f"p{p}_invert.npz"), **invert(workdir, local_dir, mesh))
  seconds["invert"] = time.time() - t0
  with open(os.path.join(out_dir, f"p{p}_info.json"), "w") as f:
    json.dump({"process_count": jax.process_count(), "devices": jax.device_count(),
               "local_devices": jax.local_device_count(),
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
