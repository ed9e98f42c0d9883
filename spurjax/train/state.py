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

  @classmethod
  def create(cls, *, apply_fn, variables, tx, loss_state=None):
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(params), loss_state={} if loss_state is None else loss_state,
               apply_fn=apply_fn, tx=tx)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  def pytree(self) -> dict:
    """The saved part (what a checkpoint holds)."""
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state, "loss_state": self.loss_state}

  def with_pytree(self, tree: dict) -> "TrainState":
    return self.replace(**tree)
