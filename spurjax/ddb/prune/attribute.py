"""Integrated Gradients (IG) in JAX and the attribution stage core of DDB.

IG of output `t` of `f` at input `x` with baseline `b`:
  A = (x - b) * sum_k w_k * grad_x f_t(b + a_k (x - b)),
with the path points `a_k` and weights `w_k` of captum's `IntegratedGradients`
(`path_weights`). The path points are folded into the batch: the inputs
(B, H, W, C) become (B * c, H, W, C) for a chunk of c points at a time, so memory
is bounded by `chunk` path points per image; chunks run under `lax.scan`.

Conventions:
  * `f` maps a float batch (N, H, W, C) to outputs (N, K). It must treat examples
    independently (eval mode: BatchNorm with running statistics).
  * Classifier images are float32 in [0, 1]; `classifier_fn` normalises inside `f`
    exactly like `spurjax.train.step.normalise` does for uint8 images. IG is
    invariant to such per-channel affine input maps (the path is the same straight
    line), so the attributions equal those taken on normalised inputs.
  * Output attributed (`ig_output`): "logit" (default) or "prob" (softmax). The
    authors' DDB code runs captum IG on the ResNet's forward, which returns logits,
    with the original image as baseline and the edit as input, and compares the
    in-mask sum with 0.3: the threshold is on the logit scale. (That code passes the
    *source* class as IG target; the paper's criterion, used here, attributes
    toward the edit's new class j.)

Configuration keys read from `cfg.ddb` (defaults in `spurjax.config_base`):
  ig_steps: 50            path points (captum's default).
  ig_method: "gausslegendre"  or riemann_{trapezoid,left,right,middle}.
  ig_output: "logit"      or "prob".
  ig_chunk: 10            path points per pass (0: all at once).
  ig_batch_size: 8        images per IG call in `attribute_edits`.
  ig_dtype: "float32"     classifier activations during IG (the reference runs fp32).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from spurjax import sharding as shd
from spurjax.errors import SpurjaxError
from spurjax.train.step import IMAGENET_MEAN, IMAGENET_STD

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
OUTPUTS = ("logit", "prob")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}



def ig_settings(cfg) -> dict:
  """The IG keyword arguments (`n_steps`, `method`, `chunk`, `batch_size`) and the `output`, `dtype` from
  `cfg.ddb.prune`."""
  d = cfg.ddb.prune
  output, dtype = str(d.ig_output), str(d.ig_dtype)
  if output not in OUTPUTS:
    raise SpurjaxError(f"config ddb.prune.ig_output = {output!r}; valid: {', '.join(OUTPUTS)}")
  if dtype not in _DTYPES:
    raise SpurjaxError(f"config ddb.prune.ig_dtype = {dtype!r}; valid: {', '.join(_DTYPES)}")
  chunk = int(d.ig_chunk)
  return {"n_steps": int(d.ig_steps), "method": str(d.ig_method), "chunk": chunk or None,
          "batch_size": int(d.ig_batch_size), "output": output, "dtype": _DTYPES[dtype]}


# ------------------------------------------------------------------ quadrature


def path_weights(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
  """Path points alpha in [0, 1] and their weights, as captum computes them (float64).

  gausslegendre: numpy's Legendre-Gauss nodes/weights mapped from [-1, 1] to [0, 1];
  riemann_*: equal steps 1/n at the left/right/middle points, or the trapezoid rule
  (n points from 0 to 1 inclusive, end weights halved).
  """
  n = int(n_steps)
  if method not in METHODS:
    raise SpurjaxError(f"IG method {method!r} is unknown; valid: {', '.join(METHODS)}")
  if method == "gausslegendre":
    if n < 1:
      raise SpurjaxError(f"IG n_steps must be >= 1 for gausslegendre, got {n}")
    nodes, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1.0 + nodes), 0.5 * w
  if n < 2:
    raise SpurjaxError(f"IG n_steps must be >= 2 for {method}, got {n}")
  weights = np.full(n, 1.0 / n)
  if method == "riemann_trapezoid":
    weights[0] /= 2
    weights[-1] /= 2
    alphas = np.linspace(0.0, 1.0, n)
  elif method == "riemann_left":
    alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
  elif method == "riemann_right":
    alphas = np.linspace(1.0 / n, 1.0, n)
  else:
    alphas = np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
  return alphas, weights


def _chunked(alphas: np.ndarray, weights: np.ndarray, chunk: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
  """(n_chunks, c) arrays; padding points get weight 0."""
  n = len(alphas)
  c = n if not chunk else max(1, min(int(chunk), n))
  total = -(-n // c) * c
  a = np.zeros(total, np.float64)
  w = np.zeros(total, np.float64)
  a[:n], w[:n] = alphas, weights
  return a.reshape(-1, c), w.reshape(-1, c)


# ------------------------------------------------------------------ IG core


def _as_pytree_fn(f: Callable) -> Partial:
  """Functions become pytrees so jit traces their arrays (weights) instead of baking them in."""
  return f if isinstance(f, Partial) else Partial(f)


def _ig(f: Partial, x, baseline, target, alphas, weights):
  """Attributions for one batch; alphas/weights are (n_chunks, c)."""
  dt = jnp.promote_types(x.dtype, jnp.float32)
  x, baseline = x.astype(dt), baseline.astype(dt)
  alphas, weights = alphas.astype(dt), weights.astype(dt)
  b = x.shape[0]
  c = alphas.shape[1]
  diff = x - baseline
  targets = jnp.repeat(target.astype(jnp.int32), c)

  def selected(points):
    out = f(points)
    out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
    return jnp.sum(jnp.take_along_axis(out, targets[:, None], axis=1))

  def body(acc, aw):
    a, w = aw
    # (B, c, H, W, C) with B outermost so a sharded B stays contiguous once flattened.
    points = baseline[:, None] + a[None, :, None, None, None] * diff[:, None]
    g = jax.grad(selected)(points.reshape((b * c,) + x.shape[1:]))
    g = g.reshape((b, c) + x.shape[1:])
    # an elementwise weighted sum, not a dot: GPUs may run float32 dots in TF32.
    return acc + jnp.sum(g * w[None, :, None, None, None], axis=1), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(x), (alphas, weights))
  return total * diff


@functools.lru_cache(maxsize=None)
def _compiled(mesh: Optional[jax.sharding.Mesh]):
  if mesh is None:
    return jax.jit(_ig)
  rep, bat = shd.replicated(mesh), shd.batch_sharding(mesh)
  return jax.jit(_ig, in_shardings=(rep, bat, bat, bat, rep, rep), out_shardings=bat)


def _local_devices(mesh) -> int:
  return len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])


def integrated_gradients(f: Callable, x, baseline, target, *, n_steps: int = 50, method: str = "gausslegendre",
                         chunk: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None) -> jax.Array:
  """IG attributions of `f(.)[:, target]` w.r.t. the input `x`, same shape as `x`.

  Args:
    f: float batch (N, H, W, C) -> outputs (N, K); a `jax.tree_util.Partial` (such as
      `classifier_fn`'s) has its arrays passed to the jitted function as arguments.
    x, baseline: (B, H, W, C) floats (numpy or jax).
    target: (B,) ints, the output index attributed per example.
    n_steps, method: captum's quadrature (`path_weights`).
    chunk: path points evaluated per pass (None: all `n_steps` at once).
    mesh: if given, the batch is split over its data axis (padded to a multiple of this
      process's devices, then cut back) and `f`'s arrays are replicated; the arrays
      passed are this process's slice of the batch.
  """
  x, baseline, target = np.asarray(x), np.asarray(baseline), np.asarray(target)
  dt = np.float64 if x.dtype == np.float64 else np.float32  # float64 only matters under jax x64 mode
  x, baseline = x.astype(dt), baseline.astype(dt)
  if x.ndim != 4 or baseline.shape != x.shape:
    raise SpurjaxError(f"IG inputs must be (B, H, W, C) with equal shapes, got x {x.shape}, baseline {baseline.shape}")
  if target.shape != (x.shape[0],):
    raise SpurjaxError(f"IG target must have shape ({x.shape[0]},), got {target.shape}")
  alphas, weights = (a.astype(dt) for a in _chunked(*path_weights(n_steps, method), chunk))
  f = _as_pytree_fn(f)
  fn = _compiled(mesh)
  if mesh is None:
    return fn(f, x, baseline, target.astype(np.int32), alphas, weights)
  n = x.shape[0]
  m = shd.pad_to_multiple(n, _local_devices(mesh))
  pad = lambda a: np.concatenate([a, np.repeat(a[-1:], m - n, axis=0)]) if m > n else a  # noqa: E731
  batch = shd.shard_batch({"x": pad(x), "b": pad(baseline), "t": pad(target.astype(np.int32))}, mesh)
  f = shd.replicate(f, mesh)
  aw = shd.replicate((alphas, weights), mesh)
  out = fn(f, batch["x"], batch["b"], batch["t"], *aw)
  if m > n and jax.process_count() > 1:  # padding would sit inside the global batch, after each slice
    raise SpurjaxError(f"IG over several processes: each process's batch ({n}) must be a multiple of its "
                       f"{_local_devices(mesh)} devices")
  return out[:n] if m > n else out


# ------------------------------------------------------------------ classifier


@dataclasses.dataclass(frozen=True)
class _Classifier:
  """Hashable static part of a classifier function: jit caches on it."""
  model: Any
  mean: tuple
  std: tuple
  dtype: Any
  output: str

  def __call__(self, variables, images):
    dt = jnp.promote_types(images.dtype, jnp.float32)
    x = (images.astype(dt) - jnp.asarray(self.mean, dt)) / jnp.asarray(self.std, dt)
    logits = self.model.apply(variables, x.astype(self.dtype), train=False)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jax.nn.softmax(logits, axis=-1) if self.output == "prob" else logits


def classifier_fn(model, variables, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  dtype=jnp.float32, output: str = "logit") -> Partial:
  """`f(images in [0, 1], NHWC float) -> logits or softmax probs` of an eval-mode classifier.

  Same normalisation as `spurjax.train.step.normalise(images * 255, mean, std, dtype)`.
  The returned Partial carries `{"params", "batch_stats"}` as traced arrays.
  """
  if output not in OUTPUTS:
    raise SpurjaxError(f"IG output {output!r} is unknown; valid: {', '.join(OUTPUTS)}")
  static = _Classifier(model, tuple(float(v) for v in mean), tuple(float(v) for v in std), dtype, output)
  return Partial(static, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})


@functools.lru_cache(maxsize=None)
def _outputs_fn():
  return jax.jit(lambda f, x: f(x))


def outputs(f: Callable, x, batch_size: int = 64) -> np.ndarray:
  """f(x) as numpy, `batch_size` images per jitted call; float32 unless x is float64."""
  x = np.asarray(x)
  x = x if x.dtype == np.float64 else x.astype(np.float32)
  f = _as_pytree_fn(f)
  bs = max(1, int(batch_size))
  outs = [np.asarray(_outputs_fn()(f, x[s:s + bs])) for s in range(0, len(x), bs)]
  return np.concatenate(outs) if outs else np.zeros((0, 0), x.dtype)


def completeness_gap(f: Callable, attributions, x, baseline, target) -> np.ndarray:
  """Per example: sum(attributions) - (f_t(x) - f_t(baseline)); zero for exact IG."""
  target = np.asarray(target).astype(np.int64)
  rows = np.arange(len(target))
  delta = outputs(f, x)[rows, target] - outputs(f, baseline)[rows, target]
  total = np.asarray(attributions, np.float64).reshape(len(target), -1).sum(axis=1)
  return total - delta


# ------------------------------------------------------------------ stage core


def _to_unit(images, what: str) -> np.ndarray:
  a = np.asarray(images)
  if a.ndim != 4:
    raise SpurjaxError(f"{what}: expected (N, H, W, C) images, got shape {a.shape}")
  if a.dtype == np.uint8:
    return a.astype(np.float32) / 255.0
  return a.astype(np.float32)


def attribute_edits(f: Callable, originals, edits, masks, targets, *, n_steps: int = 50,
                    method: str = "gausslegendre", chunk: Optional[int] = None, batch_size: int = 8,
                    mesh: Optional[jax.sharding.Mesh] = None, return_maps: bool = True) -> dict:
  """IG of each edit toward its target class, with its original image as the baseline.

  Args:
    f: classifier function (`classifier_fn`), images in [0, 1].
    originals, edits: (N, H, W, 3) uint8 (scaled by 1/255) or floats in [0, 1].
    masks: (N, H, W) (or (N, H, W, 1)) bool, the edited region, at the images' size.
    targets: (N,) the class j each edit should now show.
  Returns a dict of numpy arrays:
    rho (N,): sum of the attributions inside the mask, over pixels and channels (the
      DDB pruning score; on the scale of `f`'s output: logits or probabilities).
    total (N,): sum of all attributions.
    rho_norm (N,): rho / total, the in-mask share of the attribution; by completeness
      total ~ f_t(edit) - f_t(original). 0 where |total| < 1e-12.
    delta (N,): f_t(edit) - f_t(original); gap (N,): total - delta (quadrature error).
    out_edit, out_orig (N, K): f's outputs.
    maps (N, H, W) float32 (if return_maps): attributions summed over channels.
  """
  orig = _to_unit(originals, "original images")
  edit = _to_unit(edits, "edited images")
  m = np.asarray(masks)
  if m.ndim == 4 and m.shape[-1] == 1:
    m = m[..., 0]
  if edit.shape != orig.shape:
    raise SpurjaxError(f"edited images {edit.shape} and original images {orig.shape} differ in shape")
  if m.shape != orig.shape[:3]:
    raise SpurjaxError(f"masks have shape {m.shape}, expected {orig.shape[:3]} (one per image, same size)")
  m = m.astype(bool)
  t = np.asarray(targets).astype(np.int32).reshape(-1)
  if t.shape != (len(orig),):
    raise SpurjaxError(f"targets have shape {t.shape}, expected ({len(orig)},)")
  n = len(orig)
  bs = max(1, min(int(batch_size), n))
  procs = 1 if mesh is None else len({d.process_index for d in mesh.devices.flat})
  if procs > 1:  # each process attributes its slice of every batch, then all gather the batch
    bs = shd.pad_to_multiple(bs, mesh.devices.size)
  if n % bs:  # every call gets the same shape: one compilation
    extra = bs - n % bs
    orig, edit, m, t = (np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in (orig, edit, m, t))
  rho, total, maps, outs_e, outs_o = [], [], [], [], []
  for s in range(0, n, bs):
    sl = slice(s, s + bs)
    if procs > 1:
      local = slice(s + jax.process_index() * (bs // procs), s + (jax.process_index() + 1) * (bs // procs))
      a = shd.to_host(integrated_gradients(f, edit[local], orig[local], t[local], n_steps=n_steps, method=method,
                                           chunk=chunk, mesh=mesh)).astype(np.float64)
    else:
      a = np.asarray(integrated_gradients(f, edit[sl], orig[sl], t[sl], n_steps=n_steps, method=method,
                                          chunk=chunk, mesh=mesh), np.float64)
    per_pixel = a.sum(axis=-1)
    rho.append((per_pixel * m[sl]).reshape(len(per_pixel), -1).sum(axis=1))
    total.append(per_pixel.reshape(len(per_pixel), -1).sum(axis=1))
    if return_maps:
      maps.append(per_pixel.astype(np.float32))
    outs_e.append(outputs(f, edit[sl], bs))
    outs_o.append(outputs(f, orig[sl], bs))
  cat = lambda xs, shape: np.concatenate(xs)[:n] if xs else np.zeros(shape)  # noqa: E731
  rho, total = cat(rho, (0,)), cat(total, (0,))
  out_e, out_o = cat(outs_e, (0, 0)).astype(np.float32), cat(outs_o, (0, 0)).astype(np.float32)
  t = t[:n]
  rows = np.arange(n)
  delta = (out_e[rows, t] - out_o[rows, t]).astype(np.float64) if n else np.zeros(0)
  safe = np.abs(total) >= 1e-12
  result = {"rho": rho, "total": total, "rho_norm": np.where(safe, rho / np.where(safe, total, 1.0), 0.0),
            "delta": delta, "gap": total - delta, "out_edit": out_e, "out_orig": out_o}
  if return_maps:
    result["maps"] = cat(maps, (0,) + orig.shape[1:3]).astype(np.float32)
  return result
