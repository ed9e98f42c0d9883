"""Orbax checkpoints for both training loops: save, automatic resume, the selected best model.

`Checkpoint` is one directory of steps, each holding a state pytree and a JSON meta dict
(the newest one kept). The classifier trainer (`spurjax.train.loop.fit`) keeps two of them
(`Checkpoints`: `last` for resume, `best` for the selected variables); the diffusion loop
(`spurjax.diffusion.train.train`) keeps one.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpoint:
  """The newest (step, state pytree, meta dict) in `directory`, written synchronously."""

  def __init__(self, directory: str):
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(os.path.abspath(directory), options=opts, item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None."""
    return self._mngr.latest_step()

  def save(self, step: int, tree: Any, meta: dict, force: bool = False) -> None:
    """Writes `tree` and `meta` as `step` (`force`: even where the manager's save policy would skip it)."""
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
                    force=force)
    self._mngr.wait_until_finished()

  def restore(self, like: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, tree shaped like `like`, meta) of the newest step, or None when there is none."""
    step = self._mngr.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
    return step, out["state"], out["meta"]

  def close(self) -> None:
    self._mngr.close()


class Checkpoints:
  """`<dir>/last` keeps the newest full train state, `<dir>/best` the selected variables."""

  def __init__(self, directory: str):
    directory = os.path.abspath(directory)
    self.last = Checkpoint(os.path.join(directory, "last"))
    self.best = Checkpoint(os.path.join(directory, "best"))

  def save_last(self, epoch: int, tree: Any, meta: dict) -> None:
    self.last.save(epoch, tree, meta)

  def save_best(self, epoch: int, tree: Any, meta: dict) -> None:
    self.best.save(epoch, tree, meta, force=True)

  def restore_last(self, like: Any):
    return self.last.restore(like)

  def restore_best(self, like: Any):
    return self.best.restore(like)

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
