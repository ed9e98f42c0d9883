"""The one training loop: ERM, every baseline and DDB retraining run through `fit`.

A method changes *what* is trained (the `TrainSet`: which examples, with which labels and
per-sample weights), the loss (by name, see `spurjax.train.losses`) or the initial
variables; never the loop.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import distributed
from spurjax import metrics as M
from spurjax import models
from spurjax import sharding as shd
from spurjax.data.pipeline import ImageSource, eval_batches, make_sources, preprocess_from_config, train_batches  # noqa: F401
from spurjax.data.table import Table, TRAIN
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic
from spurjax.train import backbone, losses, progress
from spurjax.train.checkpoint import Checkpoints, restore_variables
from spurjax.train.optim import make_optimizer
from spurjax.train.state import TrainState
from spurjax.train.step import make_predict_fn, make_train_step, to_host
from spurjax.train.writer import MetricWriter

CRITERIA = {
    "val_wga": lambda m: m["val"]["worst_group_accuracy"],
    "val_avg": lambda m: m["val"]["average_accuracy"],
    "val_worst_class": lambda m: m["val"]["worst_class_accuracy"],
    "last": lambda m: m["epoch"],
}
# Epochs (and ERM mixes) that tie on the criterion are told apart by the plain validation average
# accuracy (no group label needed); a 150-image group moves WGA in steps of 0.7 points, so ties are
# common. Chosen on validation alone: selecting on one random half of each group and scoring the other
# half (200 splits, DDB retraining of seeds 0-2), WGA 91.9 against 91.5 without it.
TIE_BREAK = {
    "val_wga": lambda m: m["val"]["average_accuracy"],
    "val_worst_class": lambda m: m["val"]["average_accuracy"],
}


def selection_score(select: str, entry: dict) -> tuple:
  """(criterion, tie-break) of an evaluated epoch `entry` ({"epoch", "val": metrics, ...}); larger is better."""
  score = CRITERIA[select](entry)
  tie = TIE_BREAK[select](entry) if select in TIE_BREAK else 0.0
  return (-math.inf if score is None else float(score), 0.0 if tie is None else float(tie))


def _as_score(stored) -> tuple:
  """A saved best score: [criterion, tie-break], or a bare criterion from before tie-breaks."""
  return tuple(stored) if isinstance(stored, (list, tuple)) else (stored, -math.inf)


@dataclasses.dataclass(frozen=True)
class TrainSet:
  """Positions into a table (repeats allowed) with the label, group and loss weight of each."""

  indices: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  weights: np.ndarray

  @classmethod
  def from_table(cls, table: Table, indices=None, weights=None) -> "TrainSet":
    idx = table.indices(TRAIN) if indices is None else np.asarray(indices)
    w = np.ones(len(idx), np.float32) if weights is None else np.asarray(weights, np.float32)
    return cls(idx, table.y[idx], table.group[idx], w)

  def __len__(self):
    return len(self.indices)


def dtype_of(cfg):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[cfg.model.dtype]


def init_variables(cfg, table: Table, rng):
  """Fresh (or torchvision- / `model.init_from`-initialised) model variables."""
  model = models.get_model(cfg.model.name, table.num_classes, dtype_of(cfg))
  variables = _init(model, int(cfg.data.image_size), rng)
  variables = jax.tree.map(np.asarray, dict(variables))
  if str(cfg.model.pretrained) == backbone.REQUIRED:
    raise SpurjaxError("config model.pretrained: this recipe needs ImageNet weights (a file), or 'none'")
  path = backbone.pretrained_path(cfg.model.pretrained)
  if path:
    from spurjax.models import torchvision_io
    sd = torchvision_io.load_state_dict(path)
    variables = torchvision_io.variables_from_torchvision(sd, cfg.model.name, table.num_classes,
                                                          init_variables=variables, what=path)
  init_from = cfg.model.init_from
  if init_from:
    variables = backbone.apply_weights(backbone.resolve(init_from, cfg.model.name), cfg.model.name, variables)
  return model, variables


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(model, size: int, rng):
  """Compiled once per (model, image size): modules compare by their fields."""
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)


def predict(cfg, model, variables, source: ImageSource, table: Table, indices: np.ndarray, mesh,
            features: bool = False, desc: Optional[str] = None):
  """Eval-mode logits (and optionally features) for `indices`, as numpy, in order."""
  # Keyed by value (modules and meshes hash by their fields), never by id(): a new model
  # object may reuse a freed id.
  key = (model, mesh, tuple(cfg.data.mean), tuple(cfg.data.std), str(cfg.model.dtype), features)
  if key not in _PREDICT_CACHE:
    _PREDICT_CACHE[key] = make_predict_fn(model.apply, mesh, mean=cfg.data.mean, std=cfg.data.std,
                                          dtype=dtype_of(cfg), features=features)
  fn = _PREDICT_CACHE[key]
  variables = shd.replicate(variables, mesh)
  bs = int(cfg.train.eval_batch_size)
  outs = []
  it = eval_batches(source, indices, labels=table.y[indices], groups=table.group[indices], batch_size=bs,
                    num_threads=int(cfg.data.get("num_threads", 2)))
  n_batches = -(-len(indices) // bs)
  for batch in progress.bar(it, total=n_batches, desc=desc, leave=False, disable=desc is None):
    out = fn(variables, shd.shard_batch({"image": batch["image"]}, mesh)["image"])
    outs.append(jax.tree.map(to_host, out))
  out = jax.tree.map(lambda *a: np.concatenate(a)[:len(indices)], *outs)
  return out


_PREDICT_CACHE: dict = {}


def split_metrics(table: Table, indices: np.ndarray, logits: np.ndarray, train_counts) -> dict:
  correct, total = M.group_counts(logits.argmax(-1), table.y[indices], table.group[indices], table.num_groups)
  return M.group_metrics(correct, total, table.num_places, train_counts)


def evaluate(cfg, model, variables, table: Table, sources: dict, mesh, splits=("val", "test")) -> dict:
  train_counts = table.group_counts(TRAIN)
  out = {}
  for name in splits:
    idx = table.indices(name)
    if len(idx) == 0:
      continue
    logits = predict(cfg, model, variables, sources["eval"], table, idx, mesh)
    out[name] = split_metrics(table, idx, logits, train_counts)
  return out


def fit(cfg, table: Table, workdir: str, *, train_set: Optional[TrainSet] = None, init_vars=None,
        hooks: Sequence[Callable] = (), mesh=None, sources: Optional[dict] = None, name: str = "train") -> dict:
  """Trains, evaluates each epoch, selects by `cfg.train.select`, resumes from `workdir`.

  Returns the report dict (also written to `workdir/report.json`): per split (`val`,
  `test`) the group metrics of the selected epoch, plus `selected_epoch`, `selection`, `history`.
  With `train.interpolate` (needs `init_vars`), the metrics, the saved best variables and
  `selected_alpha` are those of the best mix (1 - alpha) * init_vars + alpha * trained; hooks get
  the train state itself (unmixed) and the mix's metrics.
  """
  mesh = mesh or shd.make_mesh()
  train_set = train_set or TrainSet.from_table(table)
  sources = sources or make_sources(cfg, table)
  select = cfg.train.get("select", "val_wga")
  if select not in CRITERIA:
    raise SpurjaxError(f"config train.select: unknown criterion '{select}' ({', '.join(CRITERIA)})")
  bs = int(cfg.train.batch_size)
  if bs % len(mesh.devices.flat):
    raise SpurjaxError(f"config train.batch_size={bs} is not divisible by the {mesh.devices.size} devices")
  steps = len(train_set) // bs
  if steps == 0:
    raise SpurjaxError(f"config train.batch_size={bs} exceeds the {len(train_set)} training examples")
  epochs = int(cfg.train.num_epochs)
  rng = jax.random.PRNGKey(int(cfg.seed))
  init_rng, step_rng = jax.random.split(rng)
  model, variables = init_variables(cfg, table, init_rng)
  if init_vars is not None:
    variables = init_vars
  loss_name = cfg.method.get("loss", "ce")
  loss_fn, loss_init = losses.get(loss_name)
  ema_decay = float(cfg.train.get("ema_decay", 0.0))
  if not 0.0 <= ema_decay < 1.0:
    raise SpurjaxError(f"config train.ema_decay = {ema_decay}: must be in [0, 1)")
  alphas = interpolation_alphas(cfg, select, init_vars is not None)
  os.makedirs(workdir, exist_ok=True)  # only once the settings are known to be valid
  tx = make_optimizer(cfg.optim, epochs * steps, steps)
  state = TrainState.create(apply_fn=model.apply, variables=variables, tx=tx,
                            loss_state=loss_init(cfg.method, table.num_groups), ema=ema_decay > 0)
  ckpt = Checkpoints(os.path.join(workdir, "ckpt"))
  writer = MetricWriter(workdir, name)
  start_epoch, history, best = 0, [], None
  restored = ckpt.restore_last(state.pytree())
  if restored is not None:
    start_epoch, tree, meta = restored
    state = state.with_pytree(tree)
    history, best = meta["history"], meta["best"]
    writer.truncate_after(start_epoch)
  state = shd.replicate(state, mesh)
  train_step = make_train_step(loss_fn, cfg.method, mesh, mean=cfg.data.mean, std=cfg.data.std, dtype=dtype_of(cfg),
                               ema_decay=ema_decay)
  step_rng = shd.replicate(step_rng, mesh)
  anchor = None
  if alphas:  # the starting weights, kept on the devices for the interpolations
    anchor = shd.replicate(jax.tree.map(np.asarray, {"params": init_vars["params"],
                                                     "batch_stats": init_vars.get("batch_stats", {})}), mesh)
  for epoch in range(start_epoch + 1, epochs + 1):
    t0 = time.time()
    it = train_batches(sources["train"], train_set.indices, labels=train_set.labels, groups=train_set.groups,
                       weights=train_set.weights, batch_size=bs, seed=int(cfg.seed), epoch=epoch,
                       num_threads=int(cfg.data.get("num_threads", 2)))
    bar = progress.bar(it, total=steps, desc=f"{name} epoch {epoch}/{epochs}", leave=False)
    sums = {}
    for batch in bar:
      batch = {k: v for k, v in batch.items() if k != "index"}
      state, m = train_step(state, shd.shard_batch(batch, mesh), step_rng)
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + v
    train_m = {k: float(v) / steps for k, v in sums.items()}
    if alphas:
      ev_vars, alpha, ev = best_interpolation(cfg, model, anchor, state.eval_variables, alphas, table, sources, mesh,
                                              lambda e, epoch=epoch: selection_score(select, {"epoch": epoch, **e}))
    else:
      ev_vars, alpha = state.eval_variables, None
      ev = evaluate(cfg, model, ev_vars, table, sources, mesh)
    rec = {"epoch": epoch, "time_s": round(time.time() - t0, 2), **{f"train/{k}": v for k, v in train_m.items()}}
    for s, sm in ev.items():
      for k in ("worst_group_accuracy", "average_accuracy_train_weighted", "average_accuracy", "worst_class_accuracy"):
        rec[f"{s}/{k}"] = sm[k]
    if alpha is not None:
      rec["alpha"] = alpha
    writer.write(int(state.step), rec)
    # The console shows validation only: test metrics are for the final report, never for watching epochs.
    progress.say(f"[{name}] epoch {epoch}/{epochs} loss {train_m.get('loss', float('nan')):.4f} | "
                 + ("" if alpha is None else f"alpha {alpha:g} | ")
                 + " | ".join(M.format_split(s, sm) for s, sm in ev.items() if s == "val"))
    entry = {"epoch": epoch, **ev}
    history.append({"epoch": epoch, "train": train_m, **({} if alpha is None else {"alpha": alpha}),
                    **{s: {k: v for k, v in sm.items() if k != "groups"} for s, sm in ev.items()}})
    score = selection_score(select, entry)
    better = best is None or (score >= _as_score(best["score"]) if select == "last" else score > _as_score(best["score"]))
    if better:
      best = {"score": list(score), "epoch": epoch, "metrics": ev, **({} if alpha is None else {"alpha": alpha})}
      ckpt.save_best(epoch, ev_vars, {"epoch": epoch})
    ckpt.save_last(epoch, state.pytree(), {"history": history, "best": best})
    for hook in hooks:
      hook(epoch, state, entry)
  ckpt.close()
  writer.close()
  report = {"selection": select, **({"tie_break": "val average_accuracy"} if select in TIE_BREAK else {}),
            "selected_epoch": best["epoch"],
            **({"selected_alpha": best["alpha"]} if "alpha" in best else {}), **best["metrics"], "history": history,
            "train_group_counts": [int(c) for c in table.group_counts(TRAIN)]}
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "report.json"), report)
  distributed.barrier("fit_done")  # report.json is written before any process goes on
  return report


def interpolation_alphas(cfg, select: str, has_start: bool, key: str = "train.interpolate") -> tuple:
  """`train.interpolate`, checked: the mixing weights alpha in (0, 1] tried each epoch (empty: off)."""
  raw = cfg.train.get("interpolate", ())
  try:
    alphas = tuple(sorted({float(a) for a in (raw if isinstance(raw, (tuple, list)) else (raw,))}))
  except (TypeError, ValueError):
    alphas = (math.nan,)
  if not alphas:
    return ()
  if any(not 0.0 < a <= 1.0 for a in alphas):
    raise SpurjaxError(f"config {key} = {raw!r}: every alpha must be a number in (0, 1]")
  if select == "last":
    raise SpurjaxError(f"config {key}: needs a validation criterion in train.select, not 'last'")
  if not has_start:
    raise SpurjaxError(f"config {key}: needs starting weights to interpolate from (e.g. DDB retraining)")
  return alphas


@jax.jit
def interpolate(start, current, alpha):
  """(1 - alpha) * start + alpha * current, leaf by leaf (weight-space ensembling, WiSE-FT)."""
  return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(b.dtype), start, current)


def best_interpolation(cfg, model, start, current, alphas, table: Table, sources: dict, mesh, score_fn):
  """The alpha whose interpolation of `start` and `current` scores best on validation.

  Each alpha is scored on the validation split only; the test split is evaluated once, for the
  chosen one. `score_fn` returns comparable values (`selection_score`); ties go to the larger alpha
  (closer to the trained weights).
  Returns (variables, alpha, {split: metrics}).
  """
  best = None
  for a in sorted(alphas, reverse=True):
    v = current if a == 1.0 else interpolate(start, current, jnp.float32(a))
    val = evaluate(cfg, model, v, table, sources, mesh, splits=("val",))
    score = score_fn(val)
    if best is None or score > best[0]:
      best = (score, a, v, val)
  _, a, v, val = best
  rest = evaluate(cfg, model, v, table, sources, mesh, splits=("test",))
  return v, a, {**val, **rest}


def load_best_variables(cfg, table: Table, workdir: str):
  """The selected variables of a finished `fit` in `workdir`."""
  _, like = init_variables(cfg, table, jax.random.PRNGKey(0))
  got = restore_variables(os.path.join(workdir, "ckpt"), {"params": like["params"],
                                                          "batch_stats": like.get("batch_stats", {})})
  if got is None:
    raise SpurjaxError(f"{workdir}: no checkpoint to load")
  return got
