"""The jitted pure functions: one train step and batched prediction.

Images arrive as uint8 NHWC and are normalised on device. The state is replicated,
batches are split over the mesh's `data` axis; XLA inserts the cross-device reductions
(BatchNorm statistics and gradients are computed over the global batch, so a sharded
step equals the single-device step).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from spurjax import sharding as shd

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def make_train_step(loss_fn: Callable, loss_cfg, mesh, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    dtype=jnp.float32, ema_decay: float = 0.0):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated.

  With `state.ema_params` kept, they move as ema <- d * ema + (1 - d) * params after each update
  (d = `ema_decay`; `optax.incremental_update` with the average as its "new" operand, which keeps
  the operation order of this rule and so its float results).
  """

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    x = normalise(batch["image"], mean, std, dtype)

    def compute(params):
      logits, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                        mutable=["batch_stats"], rngs={"dropout": rng})
      loss, loss_state, aux = loss_fn(logits, batch, state.loss_state, loss_cfg)
      return loss, (new_vars, loss_state, logits, aux)

    (loss, (new_vars, loss_state, logits, aux)), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    ema = state.ema_params
    if ema is not None:
      ema = optax.incremental_update(ema, params, ema_decay)  # ema_decay * ema + (1 - ema_decay) * params
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_vars.get("batch_stats", {}),
                              opt_state=opt_state, loss_state=loss_state, ema_params=ema)
    return new_state, {"loss": loss, "train_accuracy": acc, **aux}

  repl, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  return jax.jit(train_step, donate_argnums=0, in_shardings=(repl, data, repl), out_shardings=(repl, repl))


def make_predict_fn(apply_fn, mesh, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=jnp.float32,
                    features: bool = False):
  """Returns jitted `predict(variables, images) -> logits` (or `(logits, features)`), eval mode."""

  def predict(variables, images):
    x = normalise(images, mean, std, dtype)
    out = apply_fn(variables, x, train=False, return_features=features)
    return jax.tree.map(lambda a: a.astype(jnp.float32), out)

  repl, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(repl, data), out_shardings=data)


to_host = shd.to_host  # a global (possibly multi-process) array gathered to every host as numpy
