"""Units of work per stage: what a dry run did, what a full Waterbirds run will do, and the projection.

Units: ERM and retraining, training image-epochs (each epoch's evaluation included, which is why the
dry-run data keeps Waterbirds' split ratio); select, training images scored; segment, masks; invert,
textual-inversion steps of `batch` images (an optimiser step is `accum` of them); inpaint, sampling
steps x images; prune, edits scored with Integrated Gradients at the full run's `ddb.prune.ig_steps`.
"""
from __future__ import annotations

from typing import Mapping

WATERBIRDS = {"train": 4795, "val": 1199, "test": 5794, "classes": 2}
STAGES = ("erm", "select", "segment", "invert", "inpaint", "prune", "retrain")
UNITS = {"erm": "train image-epochs", "select": "images scored", "segment": "masks",
         "invert": "TI steps", "inpaint": "sampling steps x images", "prune": "IG edits",
         "retrain": "train image-epochs"}


def retrain_rows(n_train: int, kept: int, gen_fraction: float) -> int:
  """Rows of one retraining epoch: train plus the kept edits repeated to about `gen_fraction` of them
  (the arithmetic of `spurjax.ddb.retrain.stage.retrain_set`, backgrounds off)."""
  if kept <= 0:
    return int(n_train)
  f = float(gen_fraction)
  repeat = max(1, int(round(f / max(1e-6, 1 - f) * n_train / kept)))
  return int(n_train + repeat * kept)


def _invert_micro_steps(cfg, classes: int) -> int:
  from spurjax.ddb.invert.stage import _learns, device_batch
  if not _learns(cfg):
    return 0
  _, accum = device_batch(int(cfg.ddb.invert.batch), int(cfg.ddb.invert.accum), 1)
  return int(cfg.ddb.invert.steps) * accum * classes


def _sampling_steps(cfg) -> int:
  from spurjax.diffusion.sampling_loop import first_step
  d = cfg.ddb.inpaint
  return int(d.num_steps) - first_step(int(d.num_steps), float(d.strength))


def edits_of(cfg, per_class: int, classes: int) -> int:
  """Edits of a run selecting `per_class` images per class: each toward every other class, n_samples times."""
  return int(per_class) * classes * (classes - 1) * int(cfg.ddb.inpaint.n_samples)


def full_units(cfg, sizes: Mapping[str, int] = WATERBIRDS, kept: int | None = None) -> dict[str, float]:
  """Units of each stage of a full run with `cfg`'s counts on a dataset of `sizes` (Waterbirds).

  `kept`: edits kept by pruning (default: all of them, the most retraining can see)."""
  n, c = int(sizes["train"]), int(sizes["classes"])
  k = min(int(cfg.ddb.select.k), n // c)
  edits = edits_of(cfg, k, c)
  kept = edits if kept is None else int(kept)
  return {
      "erm": n * int(cfg.train.num_epochs),
      "select": n,
      "segment": k * c,
      "invert": _invert_micro_steps(cfg, c),
      "inpaint": _sampling_steps(cfg) * edits,
      "prune": edits,
      "retrain": int(cfg.ddb.retrain.num_epochs) * retrain_rows(n, kept, float(cfg.ddb.retrain.gen_fraction)),
  }


def done_units(stage: str, cfg, table, inputs: Mapping, folder: str) -> float:
  """Units a dry-run stage did, from its config, the data and its inputs / written files."""
  from spurjax.data.table import TRAIN
  n_train, c = len(table.indices(TRAIN)), int(table.num_classes)
  if stage == "erm":
    return n_train * int(cfg.train.num_epochs)
  if stage == "select":
    return n_train
  if stage == "segment":
    from spurjax.ddb.select import selected_indices
    return sum(len(v) for v in selected_indices(inputs["select"]).values())
  if stage == "invert":
    return _invert_micro_steps(cfg, c)
  if stage == "inpaint":
    from spurjax.ddb.inpaint.stage import read_edits
    return _sampling_steps(cfg) * len(read_edits(folder))
  if stage == "prune":
    return len(inputs["inpaint"])
  if stage == "retrain":
    kept = len(inputs["prune"].table)
    return int(cfg.ddb.retrain.num_epochs) * retrain_rows(n_train, kept, float(cfg.ddb.retrain.gen_fraction))
  raise ValueError(f"unknown stage {stage!r}")


def unit_scale(stage: str, run_cfg, full_cfg) -> float:
  """Factor from a dry-run unit to a full-run unit where the unit's size differs (IG steps per edit)."""
  if stage == "prune":
    return int(full_cfg.ddb.prune.ig_steps) / max(1, int(run_cfg.ddb.prune.ig_steps))
  return 1.0


def projection(records, run_cfg, full_cfg, sizes: Mapping[str, int] = WATERBIRDS) -> list[dict]:
  """One row per stage: the dry run's measurements and the projected hours of a full run.

  A stage's seconds per unit are its wall time less compiling and model loading, over its units; the
  projection adds those fixed costs once to the seconds per unit x the full run's units."""
  full = full_units(full_cfg, sizes)
  rows = []
  for r in records:
    work = max(0.0, r.wall_s - r.compile_s - r.load_s)
    per_unit = work / r.units * unit_scale(r.stage, run_cfg, full_cfg) if r.units > 0 else 0.0
    hours = (r.compile_s + r.load_s + per_unit * full.get(r.stage, 0)) / 3600.0
    rows.append({"stage": r.stage, "units": r.units, "unit": r.unit, "wall_s": r.wall_s,
                 "seconds_per_unit": per_unit, "compile_s": r.compile_s, "load_s": r.load_s,
                 "host_peak_gib": r.host_peak_gib, "device_peak_gib": r.device_peak_gib,
                 "full_units": full.get(r.stage, 0), "projected_hours": hours})
  return rows
