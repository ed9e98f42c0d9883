"""Orbax checkpoints: the latest (for automatic resume) and the selected best model."""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """`<dir>/last` keeps the newest full train state, `<dir>/best` the selected variables."""

  def __init__(self, directory: str):
    directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    self.last = ocp.CheckpointManager(os.path.join(directory, "last"), options=opts, item_names=("state", "meta"))
    self.best = ocp.CheckpointManager(os.path.join(directory, "best"), options=opts, item_names=("state", "meta"))

  def save_last(self, epoch: int, tree: Any, meta: dict) -> None:
    self.last.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    self.last.wait_until_finished()

  def save_best(self, epoch: int, tree: Any, meta: dict) -> None:
    self.best.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                   force=True)
    self.best.wait_until_finished()

  @staticmethod
  def _restore(mngr, like: Any) -> Optional[tuple[int, Any, dict]]:
    step = mngr.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return step, out["state"], out["meta"]

  def restore_last(self, like: Any):
    return self._restore(self.last, like)

  def restore_best(self, like: Any):
    return self._restore(self.best, like)

  def close(self):
    self.last.close()
    self.best.close()


def restore_variables(directory: str, like: Any):
  """The selected variables of a finished run (for later stages)."""
  ck = Checkpoints(directory)
  try:
    got = ck.restore_best(like)
  finally:
    ck.close()
  return None if got is None else got[1]
