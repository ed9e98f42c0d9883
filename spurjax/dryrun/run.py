"""`spurjax dryrun`: the DDB preset end to end at the real per-image sizes, with random weights and a tiny
dataset, timing and sizing every stage and projecting a full Waterbirds run.

  spurjax dryrun --config configs/waterbirds.py [--workdir W] [--models DIR] [--width N] [--resolution PX]
                 [--count KEY=VALUE ...] [--config.KEY=VALUE ...]

`--config.*` overrides describe the full run that is projected (and apply to the dry run); the dry run
itself shrinks only the counts in `DRY_COUNTS` (`--count` changes them). `--width` divides every channel
width of the written diffusion models (default 1: the real size). Writes W/dryrun.json and W/dryrun.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Mapping, Sequence

from spurjax.dryrun import counts as cnt, measure, models
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

# What the dry run does of each stage: few, but enough that every stage has work (k = 4 per class fills
# one batch of 8 in segment, inpaint and prune).
DRY_COUNTS = {"train.num_epochs": 1, "ddb.select.k": 4, "ddb.invert.steps": 2, "ddb.inpaint.num_steps": 3,
              "ddb.retrain.num_epochs": 1}
PATH_KEYS = {"base": "diffusion.path", "inpaint": "diffusion.inpaint_path", "resnet": "model.pretrained"}


def _key(override: str) -> str:
  key = override.partition("=")[0]
  return key[len("--config."):] if key.startswith("--config.") else key


def parse_counts(items: Sequence[str]) -> dict:
  """{key: int} from `KEY=VALUE` strings (`--count`); a one-line error for anything else."""
  out = {}
  for item in items:
    key, eq, raw = item.partition("=")
    try:
      value = int(raw)
    except ValueError:
      value = None
    if not eq or value is None or value < 1:
      raise SpurjaxError(f"dryrun: --count {item!r}: expected KEY=N with N >= 1 (e.g. ddb.invert.steps=2)")
    out[key] = value
  return out


def configs(spec: str, overrides: Sequence[str], paths: Mapping[str, str], dry_counts: Mapping[str, int]):
  """(full-run config, dry-run config): the preset with `overrides`; the dry run's also with the written
  models' paths (unless overridden) and `dry_counts`."""
  from spurjax.config_util import config_from
  full = config_from(spec, list(overrides))
  given = {_key(o) for o in overrides}
  extra = [f"--config.{PATH_KEYS[k]}={p}" for k, p in paths.items() if PATH_KEYS[k] not in given]
  extra += [f"--config.{k}={v}" for k, v in dry_counts.items()]
  return full, config_from(spec, list(overrides) + extra)


def check_inputs(full, dry_counts: Mapping[str, int], width: int, resolution: int) -> None:
  """One-line errors for bad input, before anything is written or computed."""
  from spurjax.models.torchvision_io import TORCHVISION_MODELS
  models.check_size(width, resolution)
  if str(full.model.name) not in TORCHVISION_MODELS:
    raise SpurjaxError(f"dryrun: model.name={full.model.name!r} has no torchvision weights layout "
                       f"(one of {', '.join(TORCHVISION_MODELS)})")
  for key, value in dry_counts.items():
    node = full
    for part in key.split("."):
      if part not in node:
        raise SpurjaxError(f"dryrun: --count {key}: unknown config key")
      node = node[part]
    if isinstance(node, bool) or not isinstance(node, int):
      raise SpurjaxError(f"dryrun: --count {key}: not a count (its value is {node!r})")
  cnt.full_units(full)   # the preset's counts make a run (strength, steps)


def _clear_stages(run_dir: str) -> None:
  """Removes earlier stage folders (only spurjax-written ones), so that every stage computes again."""
  from spurjax.stages import _remove_own  # pylint: disable=protected-access
  for name in cnt.STAGES:
    for folder in (os.path.join(run_dir, name), os.path.join(run_dir, name + ".tmp")):
      _remove_own(folder)


def dryrun(spec: str, workdir: str, overrides: Sequence[str] = (), models_dir: str | None = None,
           width: int = 1, resolution: int = 512, counts: Mapping[str, int] | None = None,
           image_size: tuple[int, int] = (320, 240), log=print) -> dict:
  """Writes the models and the data, runs every stage through `spurjax.ddb.run`, measures each and
  writes W/dryrun.json and W/dryrun.md; returns the JSON record."""
  from spurjax import stages
  from spurjax.config_util import check_workdir
  from spurjax.ddb import run as ddb_run
  from spurjax.dryrun import data as data_lib

  dry_counts = {**DRY_COUNTS, **dict(counts or {})}
  full, _ = configs(spec, overrides, {}, {})
  check_inputs(full, dry_counts, width, resolution)
  check_workdir(workdir)
  models_dir = models_dir or os.path.join(workdir, "models")
  check_workdir(models_dir, "--models")
  given = {_key(o) for o in overrides}
  written = models.write_models(models_dir, width, resolution, str(full.model.name), log=log) \
      if not all(PATH_KEYS[k] in given for k in PATH_KEYS) else {}
  paths = {k: p for k, p in written.items() if PATH_KEYS[k] not in given}
  n_train = max(int(full.train.batch_size), int(full.ddb.retrain.batch_size), 8)
  root = data_lib.write_folder(os.path.join(workdir, "data"), image_size, split_counts=data_lib.split_counts(n_train),
                               log=log)
  full, run_cfg = configs(spec, [f"--config.data.root={root}"] + list(overrides), paths, dry_counts)
  run_dir = os.path.join(workdir, "run")
  _clear_stages(run_dir)

  records: list = []
  clock, loads = measure.CompileClock(), measure.LoadClock()

  def meter(name, ctx, inputs, folder):
    return measure.measure_stage(name, clock, loads, records,
                                 lambda: (cnt.done_units(name, ctx.cfg, ctx.table, inputs, folder), cnt.UNITS[name]),
                                 log=log)

  try:
    with loads.installed(), stages.around_compute(meter):
      ddb_run.run(run_cfg, run_dir)
  finally:
    clock.close()
  rows = cnt.projection(records, run_cfg, full)
  out = {"config": spec, "overrides": list(overrides), "dry_counts": dry_counts, "width": width,
         "resolution": resolution, "image_size": list(image_size), "models": written, "data": root,
         "machine": machine(), "compile_events": sorted(clock.seen), "stages": rows,
         "records": [dataclasses.asdict(r) for r in records],
         "full_counts": full_counts(full), "total_projected_hours": sum(r["projected_hours"] for r in rows),
         "host_peak_gib": max((r["host_peak_gib"] for r in rows), default=0.0)}
  write_json_atomic(os.path.join(workdir, "dryrun.json"), out, indent=2)
  text = markdown(out)
  with open(os.path.join(workdir, "dryrun.md"), "w", encoding="utf-8") as f:
    f.write(text)
  log(text)
  return out


def full_counts(cfg) -> dict:
  """The preset's counts the projection uses, as read from the config."""
  return {"train.num_epochs": int(cfg.train.num_epochs), "ddb.select.k": int(cfg.ddb.select.k),
          "ddb.invert.steps": int(cfg.ddb.invert.steps), "ddb.invert.batch": int(cfg.ddb.invert.batch),
          "ddb.invert.accum": int(cfg.ddb.invert.accum), "ddb.inpaint.num_steps": int(cfg.ddb.inpaint.num_steps),
          "ddb.inpaint.n_samples": int(cfg.ddb.inpaint.n_samples), "ddb.prune.ig_steps": int(cfg.ddb.prune.ig_steps),
          "ddb.retrain.num_epochs": int(cfg.ddb.retrain.num_epochs),
          "ddb.retrain.gen_fraction": float(cfg.ddb.retrain.gen_fraction), "waterbirds": dict(cnt.WATERBIRDS)}


def machine() -> dict:
  import jax
  mem = None
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      mem = int(f.readline().split()[1]) / 2 ** 20
  except (OSError, ValueError, IndexError):
    pass
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": str(getattr(dev, "device_kind", dev.platform)),
          "devices": jax.device_count(), "cpus": os.cpu_count(), "host_gib": mem, "python": platform.python_version(),
          "jax": jax.__version__}


def _num(x, fmt: str) -> str:
  return "n/a" if x is None else format(x, fmt)


def markdown(out: dict) -> str:
  """The table as Markdown (also what is printed)."""
  m = out["machine"]
  dev_note = "device memory is host memory (CPU)" if m["backend"] == "cpu" else f"device: {m['device']}"
  lines = [f"# spurjax dryrun: {out['config']} (widths / {out['width']}, {out['resolution']} px diffusion)", "",
           f"Machine: {m['backend']} ({m['device']}, {m['devices']} device(s)), {m['cpus']} CPUs, "
           f"{_num(m['host_gib'], '.1f')} GiB host memory; {dev_note}.", "",
           "| stage | units done | unit | s / unit | compile s | load s | peak host GiB | peak device GiB "
           "| full-run units | projected h |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in out["stages"]:
    lines.append(f"| {r['stage']} | {r['units']:g} | {r['unit']} | {r['seconds_per_unit']:.3g} | {r['compile_s']:.1f} "
                 f"| {r['load_s']:.1f} | {r['host_peak_gib']:.2f} | {_num(r['device_peak_gib'], '.2f')} "
                 f"| {r['full_units']:g} | {r['projected_hours']:.2f} |")
  c = out["full_counts"]
  lines += ["", f"Projected wall time of a full Waterbirds run on this machine: "
            f"**{out['total_projected_hours']:.1f} h** ({out['total_projected_hours'] / 24:.1f} days).",
            f"Largest host peak of any stage: {out['host_peak_gib']:.2f} GiB.", "",
            f"Full run: Waterbirds train {c['waterbirds']['train']}, val {c['waterbirds']['val']}, test "
            f"{c['waterbirds']['test']}; ERM {c['train.num_epochs']} epochs, select.k {c['ddb.select.k']} per class, "
            f"invert {c['ddb.invert.steps']} steps x accum {c['ddb.invert.accum']} per class, inpaint "
            f"{c['ddb.inpaint.num_steps']} steps x {c['ddb.inpaint.n_samples']} sample(s) per edit, IG "
            f"{c['ddb.prune.ig_steps']} steps per edit, retrain {c['ddb.retrain.num_epochs']} epochs of train + "
            f"kept edits (all kept: an upper bound).",
            "s / unit excludes compiling and model loading, which the projection adds once per stage; "
            "ERM and retraining include each epoch's evaluation.", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  from spurjax.config_util import parse_command

  def add(p):
    p.add_argument("--models", default=None, help="where the random models are written (and reused)")
    p.add_argument("--width", type=int, default=1, help="divide every channel width of the written models")
    p.add_argument("--resolution", type=int, default=512, help="diffusion resolution in pixels (SD 2: 512)")
    p.add_argument("--count", action="append", default=[], help="KEY=N: a count the dry run does")

  args, overrides = parse_command(argv, "spurjax dryrun", workdir="dryrun", add_arguments=add)
  dryrun(args.config, args.workdir, overrides, models_dir=args.models, width=args.width,
         resolution=args.resolution, counts=parse_counts(args.count))
  return 0
