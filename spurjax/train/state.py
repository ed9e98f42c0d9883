"""The functional train state."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  ema_params: Any = None  # exponential moving average of params (train.ema_decay > 0), else None

  @classmethod
  def create(cls, *, apply_fn, variables, tx, loss_state=None, ema: bool = False):
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(params), loss_state={} if loss_state is None else loss_state,
               ema_params=jax.tree.map(jnp.array, params) if ema else None, apply_fn=apply_fn, tx=tx)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  @property
  def eval_variables(self):
    """What is evaluated and saved as the model: the EMA params when kept, else the params."""
    params = self.params if self.ema_params is None else self.ema_params
    return {"params": params, "batch_stats": self.batch_stats}

  def pytree(self) -> dict:
    """The saved part (what a checkpoint holds)."""
    tree = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state, "loss_state": self.loss_state}
    if self.ema_params is not None:
      tree["ema_params"] = self.ema_params
    return tree

  def with_pytree(self, tree: dict) -> "TrainState":
    return self.replace(**tree)
