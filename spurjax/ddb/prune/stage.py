"""Stage attribute + prune: score every edit, keep those that pass both criteria.

For an edit of a class-i image toward class j:
  psi  = ERM probability of the source class i on the edit; criterion psi < Psi_i, the mean ERM
         probability of class i over its selected images;
  rho  = Integrated-Gradients attribution toward j (baseline: the original image, input: the
         edit), summed inside the mask; criterion rho > ddb.prune_threshold.
Artefact `Kept` (the kept edits as a Table); on disk `prune/prune_log.csv` (every edit), the
kept edits as a dataset folder (`prune/metadata.csv`, images, masks) and `prune/ig_maps.npz`.
"""
from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from spurjax import distributed
from spurjax.data.images import read_image
from spurjax.data.pipeline import eval_view
from spurjax.data.table import Table
from spurjax.ddb.prune import attribute
from spurjax.ddb.prune import criteria as prune
from spurjax.stages import Stage
from spurjax.train import loop


def classifier_view_mask(mask: np.ndarray, pp) -> np.ndarray:
  """A base-size mask cropped and resized exactly like `eval_view` treats images."""
  m = np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=-1)
  return eval_view(m, pp)[..., 0] > 127


def edit_mask(row, masks) -> np.ndarray:
  """The region an edit changed: its own mask when the generator saved one (paste), else its source's."""
  if row.get("mask_path"):
    from spurjax.data.images import read_mask
    return read_mask(row["mask_path"])
  return masks[int(row["source_index"])]


def score_edits(ctx, erm, masks, edits) -> dict:
  """psi, rho (and IG maps) for every edit row of the inpaint stage."""
  cfg = ctx.cfg
  pp = loop.preprocess_from_config(cfg)
  src = ctx.sources["eval"]
  orig = np.stack([eval_view(src(int(r["source_index"])), pp) for r in edits])
  edit = np.stack([eval_view(read_image(r["path"]), pp) for r in edits])
  m = np.stack([classifier_view_mask(edit_mask(r, masks), pp) for r in edits])
  target = np.asarray([int(r["target_class"]) for r in edits])
  source = np.asarray([int(r["source_class"]) for r in edits])
  s = attribute.ig_settings(cfg)
  f = attribute.classifier_fn(erm.model, erm.variables, cfg.data.mean, cfg.data.std, s["dtype"], s["output"])
  att = attribute.attribute_edits(f, orig, edit, m, target, n_steps=s["n_steps"], method=s["method"],
                                  chunk=s["chunk"], batch_size=s["batch_size"], mesh=ctx.mesh)
  fp = attribute.classifier_fn(erm.model, erm.variables, cfg.data.mean, cfg.data.std, jnp.float32, "prob")
  probs = attribute.outputs(fp, edit.astype(np.float32) / 255.0)
  psi = probs[np.arange(len(edits)), source]
  return {"psi": psi, "rho": att["rho"], "rho_norm": att["rho_norm"], "maps": att["maps"], "orig": orig,
          "edit": edit, "mask": m, "target": target, "source": source}


@dataclasses.dataclass
class Kept:
  """The stage's artefact: the kept edits as a Table (split 0, label = target class) and the log."""
  table: Table
  log: list[dict]


def compute(ctx, inputs, folder: str) -> None:
  """Scores every edit (psi, rho), applies both criteria, writes the log and the kept dataset."""
  selected, masks, edits = inputs["select"], inputs["segment"].masks, inputs["inpaint"].rows
  threshold, score, top = prune.prune_settings(ctx.cfg)
  sc = score_edits(ctx, inputs["erm"], masks, edits)
  Psi = np.asarray([selected.psi_ref[c] for c in range(ctx.table.num_classes)], np.float64)
  recs = prune.build_records(
      source_file=[r["source_file"] for r in edits], source_class=sc["source"], target_class=sc["target"],
      sample=[int(r["sample"]) for r in edits], place=[int(ctx.table.place[int(r["source_index"])]) for r in edits],
      psi=sc["psi"], rho=sc["rho"], rho_norm=sc["rho_norm"], Psi=Psi, threshold=threshold, score=score, top=top)
  if distributed.is_main():
    edit_base = [read_image(r["path"]) for r in edits]
    mask_base = [edit_mask(r, masks) for r in edits]
    np.savez_compressed(os.path.join(folder, "ig_maps.npz"), maps=sc["maps"], orig=sc["orig"], edit=sc["edit"],
                        mask=sc["mask"])
    prune.write_prune_outputs(folder, recs, edit_base, mask_base)


def load(ctx, folder: str) -> Kept:
  return Kept(kept_table(folder, ctx.table), prune.read_prune_log(folder))


def check_config(ctx) -> None:
  """Before any work: `ddb.prune.score` is known and `ddb.prune.top` is in (0, 1]."""
  prune.prune_settings(ctx.cfg)


STAGE = Stage(name="prune", groups=("ddb.prune",), upstream=("erm", "select", "segment", "inpaint"),
              compute=compute, load=load, validate=check_config)


def kept_table(out: str, table: Table) -> Table:
  """The kept edits in `out/metadata.csv` (possibly none) as a Table."""
  import csv
  with open(os.path.join(out, "metadata.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  refs = [os.path.join(out, r["img_filename"]) for r in rows]
  masks = [os.path.join(out, r["mask_filename"]) if r.get("mask_filename") else None for r in rows]
  from spurjax.data import images
  return Table(name="kept edits", refs=refs, y=np.asarray([int(r["y"]) for r in rows], np.int32),
               place=np.asarray([int(r["place"]) for r in rows], np.int32),
               split=np.zeros(len(rows), np.int32), num_classes=table.num_classes, num_places=table.num_places,
               read_image=images.read_image, mask_refs=masks, read_mask=images.read_mask)
