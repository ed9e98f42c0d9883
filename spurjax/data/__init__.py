"""Datasets: every reader returns a `Table`; `load_table(cfg.data)` picks one by `kind`."""
from __future__ import annotations

import os

from spurjax.data.table import SPLIT_NAMES, TEST, TRAIN, VAL, Table
from spurjax.errors import SpurjaxError

KINDS = ("synth", "folder", "celeba", "metashift", "tfds")


def synth_root(d) -> str:
  return d.get("root") or os.path.join(d.get("cache_dir", "data"), f"synth-{int(d.get('synth_size', 64))}"
                                       f"-s{d.get('synth_scale', 1.0)}-seed{int(d.get('synth_seed', 0))}")


def load_table(d) -> Table:
  """The dataset a config's `data` section names (validated; raises SpurjaxError)."""
  kind = d.get("kind", "folder")
  verify = d.get("verify", "full")
  if kind == "synth":
    root = synth_root(d)
    if not os.path.exists(os.path.join(root, "metadata.csv")):
      from spurjax import distributed
      if distributed.is_main():
        from spurjax.data import synth
        print(f"generating the built-in benchmark into {root} ...", flush=True)
        synth.generate(root, image_size=int(d.get("synth_size", 64)), scale=float(d.get("synth_scale", 1.0)),
                       seed=int(d.get("synth_seed", 0)))
      distributed.barrier("synth")
    kind = "folder"
    d = dict(d, root=root)
  if kind == "folder":
    from spurjax.data.folder import read_folder
    if not d.get("root"):
      raise SpurjaxError("config data.root: no dataset folder given (--config.data.root=DIR)")
    return read_folder(d["root"], num_classes=d.get("num_classes") or None, num_places=d.get("num_places") or None,
                       verify=verify)
  if kind == "celeba":
    from spurjax.data.celeba import read_celeba
    return read_celeba(d["root"], target=d.get("target", "Blond_Hair"), spurious=d.get("spurious", "Male"))
  if kind == "metashift":
    from spurjax.data.metashift import read_metashift
    return read_metashift(d["root"])
  if kind == "tfds":
    from spurjax.data.tfds_source import read_tfds
    return read_tfds(d["tfds_name"], data_dir=d.get("root") or None, image_key=d.get("image_key", "image"),
                     label_key=d.get("label_key", "label"), attribute_key=d.get("attribute_key", "place"))
  raise SpurjaxError(f"config data.kind: unknown kind '{kind}' ({', '.join(KINDS)})")


__all__ = ["KINDS", "SPLIT_NAMES", "TEST", "TRAIN", "Table", "VAL", "load_table", "synth_root"]
