"""Backbone pretraining on a broad labelled corpus, and loading the result (`model.init_from`).

  spurjax pretrain --data DIR --out FILE [--config FILE[:arg]] [--workdir W] [--config.key=value ...]

trains `cfg.model.name` on the folder DIR (object family as the label, e.g. the corpus
`spurjax data broad` writes) with the one trainer (`spurjax.train.loop.fit`), using the
config's `pretrain` section (optimiser and schedule) where it has one, and writes the
selected variables to FILE (.npz). A classifier config then starts from them with
`model.init_from=FILE`, or `model.init_from=builtin` for the weights spurjax ships
(spurjax/assets/backbone/<model>.npz). The fc head is re-initialised whenever its class count
differs from the task's, as with torchvision weights.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from spurjax.errors import SpurjaxError

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "backbone")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "synth.py")
_META = "__meta__"


def builtin_path(model_name: str) -> str:
  return os.path.join(ASSETS, f"{model_name}.npz")


def resolve(spec: str, model_name: str) -> str:
  """`builtin` -> the shipped weights for `model_name`; anything else is a file path."""
  path = builtin_path(model_name) if spec == "builtin" else spec
  if not os.path.isfile(path):
    if spec == "builtin":
      raise SpurjaxError(f"model.init_from=builtin: spurjax ships no pretrained weights for model "
                         f"'{model_name}' (have: {', '.join(available()) or 'none'})")
    raise SpurjaxError(f"model.init_from: weights file not found: {path}")
  return path


def available() -> list[str]:
  if not os.path.isdir(ASSETS):
    return []
  return sorted(f[:-4] for f in os.listdir(ASSETS) if f.endswith(".npz"))


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out["/".join(prefix + (str(k),))] = np.asarray(v)
  return out


def save_weights(path: str, variables, meta: dict) -> None:
  """Writes `variables` ({params, batch_stats}) and a JSON `meta` dict to an .npz, atomically."""
  flat = _flatten({k: variables[k] for k in ("params", "batch_stats") if k in variables})
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  flat[_META] = np.asarray(json.dumps(meta))
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load_weights(path: str) -> tuple[dict, dict]:
  """(flat {"params/conv_0/kernel": array, ...}, meta) from a file `save_weights` wrote."""
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: np.asarray(z[k]) for k in z.files}
  except (OSError, ValueError) as e:
    raise SpurjaxError(f"{path}: not a spurjax weights file ({e})") from None
  if _META not in flat:
    raise SpurjaxError(f"{path}: not a spurjax weights file (no {_META} entry)")
  meta = json.loads(str(flat.pop(_META)))
  return flat, meta


def apply_weights(path: str, model_name: str, init_variables) -> dict:
  """`init_variables` with every leaf replaced by the file's; the fc head is kept from
  `init_variables` when the class counts differ. Raises SpurjaxError on any other mismatch."""
  flat, meta = load_weights(path)
  if meta.get("model") not in (None, model_name):
    raise SpurjaxError(f"{path}: weights are for model '{meta.get('model')}', the config's model is '{model_name}'")
  template = _flatten({k: init_variables[k] for k in ("params", "batch_stats") if k in init_variables})
  missing = sorted(set(template) - set(flat))
  extra = sorted(set(flat) - set(template))
  if missing or extra:
    raise SpurjaxError(f"{path}: does not fit model '{model_name}' (missing {missing[:3]}, unexpected {extra[:3]})")
  out = {}
  for key, like in template.items():
    got = flat[key]
    if got.shape != like.shape:
      if key.startswith("params/fc/"):  # a different number of classes: keep the fresh head
        got = like
      else:
        raise SpurjaxError(f"{path}: {key} has shape {got.shape}, model '{model_name}' needs {like.shape}")
    out[key] = np.asarray(got, like.dtype)
  tree: dict = {}
  for key, v in out.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def pretrain_config(cfg, data_dir: str):
  """The config `fit` trains the backbone with: the task config's model and input settings,
  its `pretrain` section's optimiser / schedule, the corpus as data, no init."""
  c = copy.deepcopy(cfg)
  with c.unlocked():
    c.data.kind = "folder"
    c.data.root = os.path.abspath(data_dir)
    c.data.num_classes = 0
    c.data.num_places = 0
    c.model.init_from = ""
    c.model.pretrained = ""
    c.method.name = "erm"
    c.method.loss = "ce"
    p = cfg.pretrain
    for key in ("name", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs"):
      c.optim[key] = p[key]
    for key in ("batch_size", "num_epochs"):
      c.train[key] = p[key]
    c.seed = p.seed
    c.train.select = "val_avg"  # the corpus is balanced over scenes: plain accuracy
  return c


def run(cfg, data_dir: str, out: str, workdir: str | None = None) -> dict:
  """Pretrains and writes `out`; returns the meta dict stored in it."""
  from spurjax.data import load_table
  from spurjax.train import loop
  c = pretrain_config(cfg, data_dir)
  table = load_table(c.data)
  own = workdir is None
  workdir = workdir or tempfile.mkdtemp(prefix="spurjax-pretrain-")
  t0 = time.time()
  try:
    rep = loop.fit(c, table, workdir, name="pretrain")
    variables = loop.load_best_variables(c, table, workdir)
  finally:
    if own:
      shutil.rmtree(workdir, ignore_errors=True)
  wall = time.time() - t0
  meta = {"model": c.model.name, "num_classes": int(table.num_classes), "classes": list(table.class_names or []),
          "places": list(table.place_names or []), "data": os.path.basename(os.path.normpath(data_dir)),
          "num_train": int(len(table.indices("train"))), "image_size": int(c.data.image_size),
          "mean": list(c.data.mean), "std": list(c.data.std), "optim": c.optim.to_dict(),
          "batch_size": int(c.train.batch_size), "num_epochs": int(c.train.num_epochs), "seed": int(c.seed),
          "selected_epoch": rep["selected_epoch"], "val_accuracy": rep.get("val", {}).get("average_accuracy"),
          "val_worst_group_accuracy": rep.get("val", {}).get("worst_group_accuracy"),
          "wall_s": round(wall, 1), "jax_backend": jax.default_backend()}
  if jax.process_index() == 0:
    save_weights(out, jax.tree.map(np.asarray, variables), meta)
  return meta


def _arguments(p) -> None:
  p.add_argument("--data", required=True, help="a Waterbirds-format folder (e.g. from `spurjax data broad`)")
  p.add_argument("--out", required=True, help="weights file to write (.npz)")


def main(argv) -> int:
  from spurjax.config_util import config_from, parse_command
  args, rest = parse_command(argv, "spurjax pretrain", config_default=DEFAULT_CONFIG, workdir=None,
                             add_arguments=_arguments)
  if not args.out.endswith(".npz"):
    raise SpurjaxError(f"--out must end in .npz, got {args.out}")
  meta = run(config_from(args.config, rest), args.data, args.out, getattr(args, "workdir", None))
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB): {meta['model']}, "
        f"val accuracy {meta['val_accuracy']:.3f} at epoch {meta['selected_epoch']}, {meta['wall_s']:.0f} s")
  return 0
