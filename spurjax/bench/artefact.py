"""`spurjax bench artefact`: does a finished DDB run's classifier read the generator's artefacts?

  spurjax bench artefact --config configs/synth.py --workdir runs/synth [--erm DIR] [--shared DIR]
      [--method ddb|ddb_nolabels|...] [--n-samples N] [--config.key=value ...]

Each selected majority image is repainted through its own mask with its *own* class's prompt (and
token), with the run's inpainting settings: a same-class re-inpaint keeps the label and carries the
generator's traces (the repainted square, its texture). The ERM and the retrained (DDB) classifier
are scored on the real images, on the run's kept counterfactual edits (label: the new class) and on
the re-inpaints (label: the source class). A classifier that reads the object gets the re-inpaints
about as right as the real images; one that learned "repainted region in this scene = the edit's
class" calls them the other class.

Give the run's own config and overrides (for a `bench methods` run: `--method <row>`,
`--config.seed=<k>` and any `--config.*` it was given): every stage folder's fingerprint is
checked against them, and a mismatch is a one-line error naming the folder and the setting. The
re-inpaints use the run's inpainting settings with seed `cfg.seed + 1` (fresh noise) and `--n-samples` per image. Stages
that the run shared with another (`bench methods`' `ddb_nolabels` keeps its select .. prune in
`W/ddb/seed<k>`) are found with `--shared DIR`.

Writes `W/artefact/artefact.json` and `W/artefact/artefact.png`: per class c three rows, the real
selected images of class c, the kept edits labelled c (drawn into the other class's scenes) and
the same-class re-inpaints of class c.
"""
from __future__ import annotations

import os

import numpy as np

from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

KINDS = ("real", "edit", "reinpaint")
KIND_TEXT = {"real": "real selected images", "edit": "counterfactual edits (kept)",
             "reinpaint": "same-class re-inpaints"}


def class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
  """Accuracy per class of `labels` (None for a class with no example)."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  return [float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else None for c in range(num_classes)]


def reliance(acc: dict) -> dict:
  """Per model: accuracy on real images minus on same-class re-inpaints (the share the artefact flips)."""
  out = {}
  for name, a in acc.items():
    r, g = a["real"]["all"], a["reinpaint"]["all"]
    out[name] = None if r is None or g is None else r - g
  return out


STAGE_NAMES = ("erm", "select", "segment", "invert", "inpaint", "prune", "retrain")


def stage_folders(workdir: str, erm_dir: str = "", shared: str = "") -> dict:
  """{stage: folder} of a finished run: `workdir/<stage>`, else `shared/<stage>`; ERM from `erm_dir`."""
  folders = {}
  for name in STAGE_NAMES:
    if name == "erm":
      where = [erm_dir or os.path.join(workdir, "erm")]
      hint = "give the run's ERM folder with --erm"
    else:
      where = [os.path.join(workdir, name)] + ([os.path.join(shared, name)] if shared else [])
      hint = "run `spurjax run` with this workdir first" + ("" if shared else ", or give --shared DIR")
    found = [f for f in where if os.path.isfile(os.path.join(f, "stage.json"))]
    if not found:
      raise SpurjaxError(f"{where[0]}: no finished '{name}' stage ({hint})")
    folders[name] = found[0]
  return folders


def check_fingerprints(ctx) -> None:
  """Every stage folder was made with the settings in `ctx.cfg` (a one-line error naming the first that was not)."""
  from spurjax.ddb import inpaint, invert, retrain, segment, select
  from spurjax.ddb.prune import stage as prune_stage
  from spurjax.stages import _why, fingerprint, read_stage_file
  from spurjax.train import erm
  fps = {}
  for stage in (erm.STAGE, select.STAGE, segment.STAGE, invert.STAGE, inpaint.STAGE, prune_stage.STAGE,
                retrain.STAGE):
    folder = ctx.stage_dir(stage.name)
    fp, record = fingerprint(stage, ctx, fps)
    old = read_stage_file(folder)
    if old is None or old.get("fingerprint") != fp or not old.get("complete", True):
      why = "unfinished" if old and old.get("fingerprint") == fp else _why(old, record)
      raise SpurjaxError(f"{folder}: the '{stage.name}' stage does not match the config given ({why}); give the "
                         "run's config and overrides")
    fps[stage.name] = fp


def reinpaint(ctx, tokens, selection, masks, n_samples: int) -> dict:
  """Same-class re-inpaints of every selected image: the run's inpainting settings, seed cfg.seed + 1."""
  from spurjax.ddb import inpaint
  from spurjax.ddb.nouns import nouns_for
  from spurjax.ddb.select import selected_indices
  sel = selected_indices(selection)
  indices = [int(i) for c in sorted(sel) for i in sel[c]]
  classes = [c for c in sorted(sel) for _ in sel[c]]
  images = np.stack([ctx.sources["eval"](i) for i in indices])
  stage_masks = inpaint.stage.source_masks(masks, indices, images.shape[1:3])
  out = inpaint.make_counterfactuals(
      inpaint.inpaint_pipeline(ctx, tokens), images, stage_masks, classes, tokens.tokens,
      nouns_for(ctx.cfg, ctx.table),
      n_samples=n_samples, seed=int(ctx.cfg.seed) + 1, desc="re-inpaint", same_class=True,
      **inpaint.generator_settings(ctx))
  if not np.array_equal(out["source_class"], out["target_class"]):
    raise SpurjaxError("bench artefact: a re-inpaint changed its class")  # the label below is the source class
  return {"real": images, "real_y": np.asarray(classes),
          "reinpaint": np.round(out["images"] * 255.0).astype(np.uint8), "reinpaint_y": out["source_class"]}


def evaluate(cfg, mesh, models: dict, sets: dict, num_classes: int) -> dict:
  """{model: {kind: {"all": acc, "per_class": [...], "n": n}}} of every model on every image set.

  The images are base images (the eval source's: already centre-cropped and resized), so only the
  eval view (the centre crop to `image_size`) is applied, as for the run's own test images."""
  import dataclasses
  from spurjax.bench.prior_data import memory_table
  from spurjax.data.pipeline import ImageSource
  from spurjax.train import loop
  pp = dataclasses.replace(loop.preprocess_from_config(cfg), center_crop=None)
  out = {}
  for name, (model, variables) in models.items():
    out[name] = {}
    for kind, (images, labels) in sets.items():
      if len(images) == 0:
        out[name][kind] = {"all": None, "per_class": [None] * num_classes, "n": 0}
        continue
      tab = memory_table(images, labels, np.zeros(len(images), np.int32), num_classes, 1)
      src = ImageSource(tab, pp)
      pred = loop.predict(cfg, model, variables, src, tab, np.arange(len(tab)), mesh).argmax(-1)
      out[name][kind] = {"all": float(np.mean(pred == labels)), "per_class": class_accuracy(pred, labels, num_classes),
                         "n": int(len(images))}
  return out


def _picture(path: str, sets: dict, num_classes: int, per_row: int = 8) -> None:
  from spurjax.bench.prior import save_grid
  rows = []
  for c in range(num_classes):
    for kind in KINDS:
      images, labels = sets[kind]
      pick = images[np.asarray(labels) == c][:per_row]
      row = np.full((per_row,) + images.shape[1:], 255, np.uint8)
      row[:len(pick)] = pick
      rows.append(row)
  save_grid(path, np.concatenate(rows), cols=per_row)


def run(cfg, workdir: str, erm_dir: str = "", n_samples: int = 1, shared: str = "") -> dict:
  from spurjax import distributed
  from spurjax import sharding as shd
  from spurjax.bench.common import print_table
  from spurjax.context import Context
  from spurjax.data import load_table
  from spurjax.data.table import GENERATED, concat
  from spurjax.ddb import invert, retrain, segment, select
  from spurjax.ddb.prune import stage as prune_stage
  from spurjax.train import erm, loop

  if isinstance(n_samples, bool) or int(n_samples) < 1:
    raise SpurjaxError(f"--n-samples {n_samples!r} must be a positive integer")
  if str(cfg.ddb.inpaint.generator) != "diffusion":
    raise SpurjaxError(f"bench artefact: config ddb.inpaint.generator={str(cfg.ddb.inpaint.generator)!r}: there is no diffusion "
                       "model to re-inpaint with")
  folders = stage_folders(workdir, erm_dir, shared)
  table = load_table(cfg.data)
  ctx = Context(cfg=cfg, workdir=workdir, table=table, mesh=shd.make_mesh(), dirs=folders)
  check_fingerprints(ctx)
  erm_res = erm.load(ctx, folders["erm"])
  selection = select.load(ctx, folders["select"])
  masks = segment.load(ctx, folders["segment"]).masks
  tokens = invert.load(ctx, folders["invert"])
  kept = prune_stage.load(ctx, folders["prune"]).table
  both = concat(table, kept, second_split=GENERATED)
  ddb_vars = loop.load_best_variables(retrain.retrain_config(cfg), both, folders["retrain"])

  got = reinpaint(ctx, tokens, selection, masks, int(n_samples))
  edits = np.stack([kept.image(i) for i in range(len(kept))]) if len(kept) else got["real"][:0]
  sets = {"real": (got["real"], got["real_y"]), "edit": (edits, np.asarray(kept.y)),
          "reinpaint": (got["reinpaint"], got["reinpaint_y"])}
  models = {"erm": (erm_res.model, erm_res.variables), "ddb": (erm_res.model, ddb_vars)}
  acc = evaluate(cfg, ctx.mesh, models, sets, table.num_classes)

  names = list(table.class_names or [str(c) for c in range(table.num_classes)])
  rows = []
  for kind in KINDS:
    for name in models:
      a = acc[name][kind]
      rows.append([KIND_TEXT[kind], name.upper(), a["n"], a["all"]] + list(a["per_class"]))
  title = f"Classifier accuracy on real images, edits and same-class re-inpaints ({workdir})"
  print_table(title, ["images", "model", "n", "accuracy"] + [f"class {n}" for n in names], rows)
  rel = reliance(acc)
  print("accuracy on real images minus on same-class re-inpaints: "
        + ", ".join(f"{m.upper()} {v:+.3f}" for m, v in rel.items() if v is not None))
  out_dir = os.path.join(workdir, "artefact")
  record = {"accuracy": acc, "real_minus_reinpaint": rel, "n_samples": int(n_samples), "class_names": names,
            "label_of": {"real": "own class", "edit": "new class", "reinpaint": "own class"}}
  if distributed.is_main():
    os.makedirs(out_dir, exist_ok=True)
    _picture(os.path.join(out_dir, "artefact.png"), sets, table.num_classes)
    write_json_atomic(os.path.join(out_dir, "artefact.json"), record)
  return record


def methods_config(spec: str, method: str, overrides):
  """The config `bench methods` runs DDB row `method` with (before its seed: give --config.seed=<k>)."""
  from spurjax.baselines import hparams
  from spurjax.bench.methods import DDB_VARIANTS, _with
  from spurjax.config_util import load_config
  if method not in DDB_VARIANTS:
    raise SpurjaxError(f"--method {method!r}: not a DDB row of bench methods ({', '.join(DDB_VARIANTS)})")
  return _with(hparams.method_config(load_config(spec), "erm", overrides), DDB_VARIANTS[method])


def _arguments(p) -> None:
  p.add_argument("--erm", default="", help="the run's ERM folder (default: WORKDIR/erm)")
  p.add_argument("--n-samples", type=int, default=1, help="re-inpaints per selected image")
  p.add_argument("--method", default="", help="a DDB row of `bench methods` (ddb, ddb_nolabels, ...): the config is "
                 "built as that command builds it (the ERM row's settings, then the overrides, then the row's)")
  p.add_argument("--shared", default="", help="folder of the stages the run shared with another (bench methods' "
                 "ddb_nolabels: W/ddb/seed<k>)")


def main(argv) -> int:
  from spurjax.config_util import config_from, parse_command
  args, overrides = parse_command(argv, "spurjax bench artefact", workdir=True, add_arguments=_arguments)
  cfg = methods_config(args.config, args.method, overrides) if args.method else config_from(args.config, overrides)
  run(cfg, args.workdir, erm_dir=args.erm, n_samples=args.n_samples, shared=args.shared)
  return 0
