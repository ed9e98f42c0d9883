"""DFR, Deep Feature Reweighting (Kirichenko et al., 2022): last-layer retraining on validation data.

Features come from a finished ERM run. The validation split is halved at random; for each
inverse L1 strength C in `method.dfr_reg` an L1 logistic regression is fit on a group-balanced
subset of half 1 and scored by worst-group accuracy on half 2. With the best C, the final
linear head is the average of fits on `method.dfr_subsamples` group-balanced subsets of the
full validation set. Features are standardised with the statistics of the fitting pool.

The solver is proximal gradient with Nesterov momentum (FISTA) on
  mean_i CE(W x_i + b, y_i) + ||W||_1 / (C n),
i.e. liblinear's `||w||_1 + C sum_i loss_i` divided by n (the intercept is not penalised here).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import rng as rng_ids
from spurjax import metrics as M
from spurjax import sharding as shd
from spurjax.baselines.sampling import balanced_subsample
from spurjax.data.table import TEST, TRAIN, VAL, Table
from spurjax.errors import SpurjaxError
from spurjax.train import loop

SOLVER_ITERS = 2000


def standardiser(x: np.ndarray):
  """(mean, std) per feature; constant features get std 1."""
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0)
  return mean.astype(np.float32), np.where(std > 1e-12, std, 1.0).astype(np.float32)


def _lipschitz(xa):
  """Upper bound of the gradient's Lipschitz constant: 0.5 * largest eigenvalue of xa^T xa / n."""
  v = jnp.ones((xa.shape[1],), jnp.float32) / jnp.sqrt(xa.shape[1])

  def body(_, v):
    w = xa.T @ (xa @ v)
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

  v = jax.lax.fori_loop(0, 100, body, v)
  lam = jnp.linalg.norm(xa @ v) ** 2 / xa.shape[0]
  return 0.5 * lam * 1.05 + 1e-6


@functools.partial(jax.jit, static_argnames=("num_classes", "iters"))
def _fista(x, y, c, num_classes: int, iters: int):
  n, d = x.shape
  xa = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
  onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
  step = 1.0 / _lipschitz(xa)
  thresh = step / (c * n)
  mask = jnp.concatenate([jnp.ones((d, 1)), jnp.zeros((1, 1))], axis=0)  # intercept row unpenalised

  def grad(theta):
    p = jax.nn.softmax(xa @ theta, axis=-1)
    return xa.T @ (p - onehot) / n

  def prox(theta):
    shrunk = jnp.sign(theta) * jnp.maximum(jnp.abs(theta) - thresh, 0.0)
    return jnp.where(mask > 0, shrunk, theta)

  def body(_, carry):
    theta, z, t = carry
    new = prox(z - step * grad(z))
    t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
    z = new + ((t - 1.0) / t_new) * (new - theta)
    return new, z, t_new

  theta0 = jnp.zeros((d + 1, num_classes), jnp.float32)
  theta, _, _ = jax.lax.fori_loop(0, iters, body, (theta0, theta0, jnp.float32(1.0)))
  return theta[:d], theta[d]


def fit_l1_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, iters: int = SOLVER_ITERS):
  """Multinomial L1 logistic regression (for 2 classes equal to the binary one); returns (W [d,K], b [K])."""
  if c <= 0:
    raise SpurjaxError(f"config method.dfr_reg: C must be > 0, got {c}")
  w, b = _fista(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.float32(c), num_classes, int(iters))
  return np.asarray(w), np.asarray(b)


@dataclasses.dataclass(frozen=True)
class LinearHead:
  """A standardised linear classifier on features."""
  w: np.ndarray
  b: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  def logits(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float32) - self.mean) / self.std) @ self.w + self.b


def fit_head(x, y, groups, pool, num_classes, num_groups, c, subsamples, rng, iters=SOLVER_ITERS):
  """Average of `subsamples` fits, each on a group-balanced subset of positions `pool`."""
  mean, std = standardiser(x[pool])
  ws, bs = [], []
  for _ in range(int(subsamples)):
    sub = pool[balanced_subsample(groups[pool], num_groups, rng)]
    w, b = fit_l1_logreg((x[sub] - mean) / std, y[sub], num_classes, c, iters)
    ws.append(w)
    bs.append(b)
  return LinearHead(np.mean(ws, 0), np.mean(bs, 0), mean, std)


def worst_group_accuracy(logits, y, groups, num_groups) -> float:
  correct, total = M.group_counts(np.asarray(logits).argmax(-1), y, groups, num_groups)
  present = total > 0
  return float((correct[present] / total[present]).min())


def dfr(x, y, groups, num_classes: int, num_groups: int, c_grid: Sequence[float], subsamples: int, seed: int,
        iters: int = SOLVER_ITERS):
  """Tunes C on validation halves and fits the final head on the full validation data.

  Args:
    x, y, groups: validation features [n, d], labels and group ids.
  Returns:
    (LinearHead, info) with info = {"C": best C, "tune_wga": {C: WGA on half 2}}.
  """
  x, y, groups = np.asarray(x, np.float32), np.asarray(y), np.asarray(groups)
  if len(c_grid) == 0:
    raise SpurjaxError("config method.dfr_reg: empty list of C values")
  rng = np.random.default_rng([int(seed), rng_ids.DFR_SUBSAMPLE])
  perm = rng.permutation(len(y))
  half1, half2 = np.sort(perm[:len(y) // 2]), np.sort(perm[len(y) // 2:])
  tune = {}
  for c in c_grid:
    head = fit_head(x, y, groups, half1, num_classes, num_groups, float(c), 1, rng, iters)
    tune[float(c)] = worst_group_accuracy(head.logits(x[half2]), y[half2], groups[half2], num_groups)
  best = max(tune, key=tune.get)  # first C of the grid among ties
  head = fit_head(x, y, groups, np.arange(len(y)), num_classes, num_groups, best, subsamples, rng, iters)
  return head, {"C": best, "tune_wga": {str(k): v for k, v in tune.items()}}


def run(cfg, table: Table, workdir: str, erm_workdir: str) -> dict:
  """DFR on the features of the ERM model selected in `erm_workdir`; writes nothing itself."""
  erm_report = os.path.join(erm_workdir, "report.json")
  if not os.path.isfile(erm_report):
    raise SpurjaxError(f"{erm_workdir}: no finished ERM run (report.json) for DFR")
  with open(erm_report) as f:
    erm_rep = json.load(f)
  val_idx, test_idx = table.indices(VAL), table.indices(TEST)
  if len(val_idx) == 0:
    raise SpurjaxError(f"dataset {table.name}: DFR needs a validation split, none found")
  model, _ = loop.init_variables(cfg, table, jax.random.PRNGKey(0))
  variables = loop.load_best_variables(cfg, table, erm_workdir)
  sources = loop.make_sources(cfg, table)
  mesh = shd.make_mesh()
  feats = {}
  for name, idx in (("val", val_idx), ("test", test_idx)):
    if len(idx):
      _, feats[name] = loop.predict(cfg, model, variables, sources["eval"], table, idx, mesh, features=True)
  head, info = dfr(feats["val"], table.y[val_idx], table.group[val_idx], table.num_classes, table.num_groups,
                   tuple(cfg.method.dfr_reg), int(cfg.method.dfr_subsamples), int(cfg.seed))
  train_counts = table.group_counts(TRAIN)
  rep = {"selection": "dfr: C by worst-group accuracy on a random half of val, head fit on val",
         "selected_epoch": erm_rep.get("selected_epoch")}
  for name, idx in (("val", val_idx), ("test", test_idx)):
    if name in feats:
      rep[name] = loop.split_metrics(table, idx, head.logits(feats[name]), train_counts)
  rep["val"]["optimistic"] = True
  rep["val_note"] = "optimistic: DFR trains its last layer on the validation set"
  rep["history"] = []
  rep["train_group_counts"] = [int(c) for c in train_counts]
  rep["dfr"] = {**info, "subsamples": int(cfg.method.dfr_subsamples), "erm_workdir": os.path.abspath(erm_workdir),
                "erm_selected_epoch": erm_rep.get("selected_epoch"),
                "feature_dim": int(feats["val"].shape[1])}
  np.savez(os.path.join(workdir, "dfr_head.npz"), w=head.w, b=head.b, mean=head.mean, std=head.std)
  return rep
