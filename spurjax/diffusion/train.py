"""The one diffusion training loop: prior training and textual inversion both run through it.

Pieces (the model and its loss are in `spurjax.diffusion.objective`; `Model`, `pipeline_params`
and `diffusion_loss` are importable from here too):

- `partition` / `merge`: split a `{"unet", "text", "vae"}` param tree into the trainable
  leaves and the frozen rest. Only trainable leaves are differentiated and seen by the
  optimiser, so frozen weights are bit-identical after training by construction.
- `make_tx`: optax optimiser on the trainable leaves, with gradient accumulation
  (`optax.MultiSteps`) and optional row masks (e.g. only the new token rows of the text
  embedding table move: gradient and update rows outside the mask are zeroed, and the
  parameter rows outside it are copied, not re-added).
- `make_train_step`: the jitted step on `diffusion_loss`, batch sharded over a mesh, state
  replicated and donated, rng `fold_in(rng, micro_step)`.
- `train`: the loop, with the classifier trainer's machinery: Orbax checkpoints and automatic
  resume (`spurjax.train.checkpoint.Checkpoint`) and the progress bar (`spurjax.train.progress`).

Why this loop is not `spurjax.train.loop.fit`: `fit` (106 lines) runs epochs of a classifier
and, after each, evaluates validation and test, selects the best epoch, keeps it in a second
checkpoint, mixes weights (`train.interpolate`), calls hooks and writes a report. `train`
(51 lines, half of them docstring) runs a fixed number of micro-steps over a deterministic
`batch_fn`, with no evaluation or selection, checkpoints every `ckpt_every` steps and logs mean
losses. One function doing both would carry each one's branches behind flags and be longer
than the two; they share everything below the loop instead (checkpoint saving and restoring in
`spurjax.train.checkpoint`, progress output in `spurjax.train.progress`).

Batches are dicts of numpy arrays: `pixels` uint8 NHWC at the model's resolution,
`ids` int32 (B, L) token ids and, for an inpainting UNet, optionally `masks` float32
(B, H, W), 1 = repaint (without them the whole image is masked).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from spurjax import sharding as shd
from spurjax.diffusion.objective import Model, diffusion_loss, pipeline_params  # noqa: F401 (re-exported)
from spurjax.errors import SpurjaxError
from spurjax.train import progress
from spurjax.train.checkpoint import Checkpoint

Path = tuple[str, ...]
TOKEN_EMBEDDING: Path = ("text", "embeddings", "token_embedding", "embedding")


# ----------------------------------------------------------------------------- trainable subsets


def _flat(tree) -> dict[Path, Any]:
  return traverse_util.flatten_dict(tree)


def trainable_paths(params, prefixes) -> tuple[Path, ...]:
  """Leaf paths of `params` under any of `prefixes` (each a path tuple, e.g. ("unet",))."""
  prefixes = [tuple(p) for p in prefixes]
  paths = tuple(p for p in _flat(params) if any(p[:len(q)] == q for q in prefixes))
  if not paths:
    raise SpurjaxError(f"no trainable parameters under {prefixes}")
  return paths


def partition(params, paths) -> tuple[dict, dict]:
  """(trainable, frozen) flat dicts {path: array}."""
  flat, wanted = _flat(params), set(paths)
  missing = [p for p in wanted if p not in flat]
  if missing:
    raise SpurjaxError(f"trainable parameter {'/'.join(missing[0])} does not exist")
  return ({p: v for p, v in flat.items() if p in wanted}, {p: v for p, v in flat.items() if p not in wanted})


def merge(trainable: Mapping, frozen: Mapping) -> dict:
  return traverse_util.unflatten_dict({**frozen, **trainable})


# ----------------------------------------------------------------------------- optimiser


def _key(path: Path) -> str:
  return "/".join(path)


def zero_rows(row_masks: Mapping[str, np.ndarray]) -> optax.GradientTransformation:
  """Zeroes the rows of the named leaves (keys "a/b/c" of a flat dict) where the mask is False."""
  masks = {k: np.asarray(m, bool) for k, m in row_masks.items()}

  def update(updates, state, params=None):
    del params
    out = dict(updates)
    for k, m in masks.items():
      if k in out:
        u = out[k]
        out[k] = jnp.where(jnp.asarray(m).reshape((-1,) + (1,) * (u.ndim - 1)), u, jnp.zeros_like(u))
    return out, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_tx(*, lr: float, optimizer: str = "adamw", weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
            grad_accum: int = 1, clip_norm: float = 0.0, warmup_steps: int = 0,
            row_masks: Mapping[str, np.ndarray] | None = None, decay_steps: int = 0,
            end_lr_frac: float = 0.0) -> optax.GradientTransformation:
  """Optimiser over the flat trainable dict (keys "a/b/c"): constant lr after a linear warmup, or,
  with `decay_steps` > 0, a cosine decay from lr to `end_lr_frac` x lr over that many updates after it.

  `row_masks` names leaves of which only the True rows may change; `grad_accum` > 1
  averages that many micro-batches before each update (optax.MultiSteps).
  """
  if lr <= 0 or grad_accum < 1:
    raise SpurjaxError(f"optimiser: lr={lr} must be > 0 and grad_accum={grad_accum} >= 1")
  sched = optax.constant_schedule(lr)
  if decay_steps > 0:
    sched = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(end_lr_frac))
  if warmup_steps > 0:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), sched], [warmup_steps])
  if optimizer == "adamw":
    opt = optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay)
  elif optimizer == "adam":
    opt = optax.adam(sched, b1=b1, b2=b2)
  else:
    raise SpurjaxError(f"optimiser: unknown name {optimizer!r} (adam, adamw)")
  parts = []
  if row_masks:
    parts.append(zero_rows(row_masks))
  if clip_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(opt)
  if row_masks:
    parts.append(zero_rows(row_masks))  # weight decay must not move frozen rows either
  tx = optax.chain(*parts)
  return optax.MultiSteps(tx, grad_accum) if grad_accum > 1 else tx


# ----------------------------------------------------------------------------- state and step


class State(struct.PyTreeNode):
  """`step` counts micro-batches; `params` is the full tree; `ema` the EMA of the trainable leaves (or {})."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema: Any

  def pytree(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "ema": self.ema}


def init_state(params, paths, tx: optax.GradientTransformation, ema: bool = False) -> State:
  trainable, _ = partition(params, paths)
  flat = {_key(p): v for p, v in trainable.items()}
  # One compiled init instead of one small program per leaf shape.
  return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(flat),
               ema=jax.tree.map(jnp.asarray, flat) if ema else {})


def ema_params(state: State, paths) -> dict:
  """The full param tree with the trainable leaves replaced by their EMA (as host arrays)."""
  if not state.ema:
    return jax.tree.map(np.asarray, state.params)
  _, frozen = partition(state.params, paths)
  return jax.tree.map(np.asarray, merge({p: state.ema[_key(p)] for p in paths}, frozen))


def make_train_step(model: Model, tx: optax.GradientTransformation, paths, mesh, *, cond_drop: float = 0.0,
                    uncond_ids: np.ndarray | None = None, ema_decay: float = 0.0, grad_accum: int = 1,
                    row_masks: Mapping[str, np.ndarray] | None = None, mask_weight: float = 1.0,
                    min_snr_gamma: float = 0.0, object_weight: float = 1.0,
                    object_t_max: float = 1.0) -> Callable:
  """`step(state, batch, rng) -> (state, {"loss"})`, jitted: state replicated and donated, batch sharded.

  Only the leaves in `paths` are differentiated and updated; leaves named in `row_masks`
  keep their masked-out rows exactly (copied, never re-added). The EMA (if the state has
  one) moves once per optimizer update, with decay min(ema_decay, (1 + n) / (10 + n))
  after n updates. A batch may carry `masks` (B, H, W) for an inpainting UNet and `objects`
  (B, H, W) object masks (see `diffusion_loss`, with `mask_weight`, `min_snr_gamma`,
  `object_weight` and `object_t_max`).
  """
  paths = tuple(paths)
  masks = {k: jnp.asarray(np.asarray(m, bool)) for k, m in (row_masks or {}).items()}
  uncond = None if uncond_ids is None else jnp.asarray(np.asarray(uncond_ids, np.int32).reshape(-1))

  def step(state: State, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    trainable, frozen = partition(state.params, paths)
    flat = {_key(p): v for p, v in trainable.items()}

    def loss_fn(flat_params):
      full = merge({p: flat_params[_key(p)] for p in paths}, frozen)
      return diffusion_loss(model, full, batch["pixels"], batch["ids"], rng, cond_drop, uncond,
                            masks=batch.get("masks"), mask_weight=mask_weight, min_snr_gamma=min_snr_gamma,
                            objects=batch.get("objects"), object_weight=object_weight,
                            object_t_max=object_t_max)

    loss, grads = jax.value_and_grad(loss_fn)(flat)
    updates, opt_state = tx.update(grads, state.opt_state, flat)
    new = {}
    for k, p in flat.items():
      q = p + updates[k].astype(p.dtype)
      if k in masks:
        q = jnp.where(masks[k].reshape((-1,) + (1,) * (p.ndim - 1)), q, p)
      new[k] = q
    ema = state.ema
    if ema:
      n = (state.step + 1) // grad_accum
      decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
      decay = jnp.where((state.step + 1) % grad_accum == 0, decay, 1.0)
      ema = optax.incremental_update(ema, new, decay)  # decay * ema + (1 - decay) * new
    params = merge({p: new[_key(p)] for p in paths}, frozen)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), {"loss": loss}

  repl, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  return jax.jit(step, donate_argnums=0, in_shardings=(repl, data, repl), out_shardings=(repl, repl))


# ----------------------------------------------------------------------------- the loop


def _process_slice(batch: dict) -> dict:
  """This process's rows of a global batch (all of it with one process)."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  return {k: v[i * (len(v) // n):(i + 1) * (len(v) // n)] for k, v in batch.items()}


def train(step_fn: Callable, state: State, batch_fn: Callable[[int], dict], *, steps: int, mesh,
          rng: jax.Array, workdir: str | None = None, ckpt_every: int = 500, desc: str = "train",
          log_every: int = 50, log_file: str | None = None, paths=None) -> tuple[State, list[dict]]:
  """Runs `steps` micro-batches (resuming from `workdir/ckpt` when a checkpoint is there).

  Args:
    step_fn: from `make_train_step`.
    state: the initial state (host or device arrays).
    batch_fn: micro-step index -> global batch (dict of numpy arrays); must be deterministic
      so a resumed run sees the batches an uninterrupted one does.
    steps: total micro-steps (optimizer steps x grad_accum).
    workdir: checkpoint root (None: no checkpoints).
    ckpt_every: micro-steps between checkpoints (one is always written at the end).
    log_every: micro-steps per logged mean loss (to `log_file` as JSON lines, and the bar).
    paths: the trainable leaves; given, checkpoints hold only them (with the optimiser state and the
      EMA), not the frozen weights, which the caller rebuilds (textual inversion: one embedding table
      instead of a whole Stable Diffusion every `ckpt_every` micro-steps).
  Returns:
    (final state, log records [{"step", "loss", "time_s"}]).
  """
  ckpt = Checkpoint(os.path.join(workdir, "ckpt")) if workdir else None
  start, history = 0, []
  restored = None if ckpt is None else ckpt.restore(checkpoint_tree(state, paths))
  if restored is not None:
    start, tree, meta = restored
    start = int(start)
    state = from_checkpoint_tree(state, tree, paths)
    history = list(meta.get("history", []))
  state = shd.replicate(state, mesh)
  rng = shd.replicate(rng, mesh)
  is_main = jax.process_index() == 0
  bar = progress.bar(range(start, steps), initial=start, total=steps, desc=desc, disable=start >= steps,
                     mininterval=2.0)
  losses, t0 = [], time.time()
  for i in bar:
    batch = shd.shard_batch(_process_slice(batch_fn(i)), mesh)
    state, metrics = step_fn(state, batch, rng)
    losses.append(metrics["loss"])
    done = i + 1
    if done % log_every == 0 or done == steps:
      mean = float(np.mean([float(l) for l in losses]))
      rec = {"step": done, "loss": mean, "time_s": round(time.time() - t0, 2)}
      history.append(rec)
      losses = []
      bar.set_postfix(loss=f"{mean:.4f}")
      if log_file and is_main:
        with open(log_file, "a") as f:
          f.write(json.dumps(rec) + "\n")
    if ckpt is not None and (done % ckpt_every == 0 or done == steps):
      ckpt.save(done, jax.device_get(checkpoint_tree(state, paths)), {"history": history})
  bar.close()
  if ckpt is not None:
    ckpt.close()
  return state, history


def checkpoint_tree(state: State, paths=None) -> dict:
  """What a checkpoint holds: the whole state, or (with `paths`) its trainable leaves only."""
  if paths is None:
    return state.pytree()
  trainable, _ = partition(state.params, paths)
  return {"step": state.step, "params": {_key(p): v for p, v in trainable.items()}, "opt_state": state.opt_state,
          "ema": state.ema}


def from_checkpoint_tree(state: State, tree: dict, paths=None) -> State:
  """`state` with a checkpoint's tree put back (trainable leaves merged into the frozen rest)."""
  if paths is None:
    return state.replace(**tree)
  _, frozen = partition(state.params, paths)
  trainable = {p: tree["params"][_key(p)] for p in paths}
  return state.replace(step=tree["step"], params=merge(trainable, frozen), opt_state=tree["opt_state"], ema=tree["ema"])


def sample_batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
  """Indices of micro-step `step`: consecutive slices of per-epoch permutations of range(n)."""
  out = []
  pos = step * batch
  while len(out) < batch:
    epoch, offset = divmod(pos, n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    take = perm[offset:offset + batch - len(out)]
    out.extend(take.tolist())
    pos += len(take)
  return np.asarray(out, np.int64)
