"""Two-criterion pruning of generated counterfactuals, and the kept dataset on disk.

An edit of a class-i source image, relabelled as class j, is kept only if BOTH hold:
  * psi < Psi_i: the ERM softmax probability of the source class i on the edit is
    below Psi_i, the mean ERM probability of class i over the selected class-i images
    (`source_reference_prob`);
  * rho > threshold: the Integrated Gradients attribution toward j, original image as
    baseline and edit as input, summed inside the edit mask (`attribute.attribute_edits`),
    exceeds the threshold (0.3 in the authors' code, on the logit scale by default).
Both inequalities are strict, as in the authors' code.

Configuration keys read from `cfg.ddb` (defaults in `spurjax.config_base`):
  prune_threshold: 0.3   threshold on the score.
  prune_score: "rho"     "rho" (raw in-mask sum) or "rho_norm" (in-mask share of the total).

Output folder (`write_prune_outputs`):
  prune_log.csv   one row per generated image: source_file, source_class, target_class,
                  sample, psi, Psi_i, rho, rho_norm, kept (1/0).
  metadata.csv    the kept images as a Waterbirds-format dataset: img_filename, y (= j),
                  split (= 0, train), place (the source image's place), mask_filename,
                  source_file. Readable by `spurjax.data.folder.read_folder` when every
                  class has a kept image.
  images/, masks/ the kept edits and their edit masks (PNG).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from spurjax.data import images as image_io
from spurjax.errors import SpurjaxError

LOG_FILE = "prune_log.csv"
META_FILE = "metadata.csv"
LOG_COLUMNS = ("source_file", "source_class", "target_class", "sample", "psi", "Psi_i", "rho", "rho_norm", "kept")
META_COLUMNS = ("img_filename", "y", "split", "place", "mask_filename", "source_file")
SCORES = ("rho", "rho_norm")



def prune_settings(cfg) -> tuple[float, str, float]:
  """(threshold, score name, top share) from cfg.ddb, checked."""
  threshold = float(cfg.ddb.prune.threshold)
  score = str(cfg.ddb.prune.score)
  if score not in SCORES:
    raise SpurjaxError(f"config ddb.prune.score = {score!r}; valid: {', '.join(SCORES)}")
  top = float(cfg.ddb.prune.top)
  if not 0.0 < top <= 1.0:
    raise SpurjaxError(f"config ddb.prune.top = {top}; it must be in (0, 1]")
  return threshold, score, top


def source_reference_prob(probs, labels, num_classes: Optional[int] = None) -> np.ndarray:
  """Psi per class: mean ERM probability of class i over the selected images of class i.

  Args:
    probs: (N, K) ERM softmax probabilities of the selected (majority) images.
    labels: (N,) their classes.
  Returns (K,) float64; NaN for a class without selected images.
  """
  p = np.asarray(probs, np.float64)
  y = np.asarray(labels).astype(np.int64).reshape(-1)
  if p.ndim != 2 or p.shape[0] != y.shape[0]:
    raise SpurjaxError(f"selected-image probabilities {p.shape} do not match labels {y.shape}")
  k = int(num_classes or p.shape[1])
  out = np.full(k, np.nan)
  for c in range(k):
    sel = y == c
    if sel.any():
      out[c] = p[sel, c].mean()
  return out


def prune_decisions(psi, Psi_source, rho, threshold: float) -> np.ndarray:  # noqa: N803
  """kept = (psi < Psi_source) & (rho > threshold), elementwise.

  psi: ERM probability of the source class on each edit; Psi_source: Psi of that
  edit's source class; rho: its attribution score.
  """
  psi, ref, rho = (np.asarray(a, np.float64).reshape(-1) for a in (psi, Psi_source, rho))
  if not psi.shape == ref.shape == rho.shape:
    raise SpurjaxError(f"pruning inputs differ in length: psi {psi.shape}, Psi {ref.shape}, rho {rho.shape}")
  if np.isnan(ref).any():
    raise SpurjaxError("pruning: Psi is undefined (NaN) for a source class without selected images")
  return (psi < ref) & (rho > float(threshold))


def keep_top(kept, score, target_class, top: float) -> np.ndarray:
  """Of the kept edits, only the `top` fraction with the highest score per target class (rounded up).

  A stricter third criterion than the threshold: the attribution score ranks edits by how much of
  the classifier's move toward the new class lies inside the mask, and its absolute scale changes
  with the ERM network, so a share is kept rather than a value. top = 1 keeps every kept edit.
  """
  kept = np.asarray(kept, bool).reshape(-1).copy()
  score, target = np.asarray(score, np.float64).reshape(-1), np.asarray(target_class).reshape(-1)
  if not 0.0 < top <= 1.0:
    raise SpurjaxError(f"config ddb.prune.top = {top}; it must be in (0, 1]")
  if top == 1.0:
    return kept
  for c in np.unique(target):
    idx = np.flatnonzero(kept & (target == c))
    n = int(np.ceil(top * len(idx)))
    drop = idx[np.argsort(-score[idx], kind="stable")[n:]]
    kept[drop] = False
  return kept


def build_records(*, source_file: Sequence, source_class, target_class, sample, place, psi, rho, rho_norm,
                  Psi: Sequence[float], threshold: float, score: str = "rho", top: float = 1.0) -> list[dict]:  # noqa: N803
  """One record per edit, with Psi_i looked up by source class and `kept` decided.

  `score` picks which of rho / rho_norm is compared with the threshold; `top` < 1 then keeps only
  that share of the passing edits per target class, highest score first (`keep_top`).
  """
  src = np.asarray(source_class).astype(np.int64).reshape(-1)
  Psi = np.asarray(Psi, np.float64)  # noqa: N806
  if score not in SCORES:
    raise SpurjaxError(f"pruning score {score!r} is unknown; valid: {', '.join(SCORES)}")
  if src.size and (src.min() < 0 or src.max() >= len(Psi)):
    raise SpurjaxError(f"pruning: source class {int(src.max())} has no Psi ({len(Psi)} classes)")
  psi_i = Psi[src]
  rho, rho_norm = np.asarray(rho, np.float64).reshape(-1), np.asarray(rho_norm, np.float64).reshape(-1)
  ranked = rho if score == "rho" else rho_norm
  kept = keep_top(prune_decisions(psi, psi_i, ranked, threshold), ranked, target_class, float(top))
  cols = {"source_file": list(source_file), "source_class": src, "target_class": np.asarray(target_class).reshape(-1),
          "sample": np.asarray(sample).reshape(-1), "place": np.asarray(place).reshape(-1),
          "psi": np.asarray(psi, np.float64).reshape(-1), "Psi_i": psi_i, "rho": rho, "rho_norm": rho_norm,
          "kept": kept}
  n = len(src)
  for k, v in cols.items():
    if len(v) != n:
      raise SpurjaxError(f"pruning: column {k!r} has {len(v)} entries, expected {n}")
  item = lambda a: a.item() if isinstance(a, np.generic) else a  # noqa: E731
  return [{k: (v[r] if k == "source_file" else item(v[r])) for k, v in cols.items()} for r in range(n)]


def _fmt(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    return "nan" if math.isnan(v) else f"{float(v):.8g}"
  return str(v)


def _image_name(k: int, rec: Mapping) -> str:
  return f"{k:06d}_c{int(rec['source_class'])}to{int(rec['target_class'])}_s{int(rec['sample'])}.png"


def write_prune_outputs(out_dir: str, records: Sequence[Mapping], images: Sequence, masks: Optional[Sequence] = None
                        ) -> dict:
  """Writes the pruning log and the kept images as a dataset folder into `out_dir`.

  Args:
    out_dir: the folder to write into (the prune stage's `.tmp` folder, renamed when complete).
    records: per generated image, a mapping with the LOG_COLUMNS (rho_norm optional)
      plus `place`, the source image's place (needed for kept images).
    images: per record, the edit as uint8 HWC (only kept ones are read).
    masks: optional, per record, the edit mask as bool HW (or None).
  Returns {"n": records, "kept": kept images, "dir": out_dir}.
  """
  if len(images) != len(records) or (masks is not None and len(masks) != len(records)):
    raise SpurjaxError(f"{out_dir}: {len(records)} pruning records but {len(images)} images"
                       + ("" if masks is None else f" and {len(masks)} masks"))
  tmp = out_dir
  os.makedirs(os.path.join(tmp, "images"), exist_ok=True)
  os.makedirs(os.path.join(tmp, "masks"), exist_ok=True)
  log_rows, meta_rows = [], []
  for k, rec in enumerate(records):
    missing = [c for c in LOG_COLUMNS if c not in rec and c != "rho_norm"]
    if missing:
      raise SpurjaxError(f"{out_dir}: pruning record {k} lacks {', '.join(missing)}")
    log_rows.append([_fmt(rec.get(c, float("nan"))) for c in LOG_COLUMNS])
    if not bool(rec["kept"]):
      continue
    place = rec.get("place")
    if place is None or int(place) < 0:
      raise SpurjaxError(f"{out_dir}: kept record {k} ({rec['source_file']}) has no source place")
    name = _image_name(k, rec)
    img = np.asarray(images[k])
    if img.dtype != np.uint8 or img.ndim != 3:
      raise SpurjaxError(f"{out_dir}: image of record {k} must be uint8 HWC, got {img.dtype} {img.shape}")
    image_io.save_png(os.path.join(tmp, "images", name), img)
    mask_name = ""
    if masks is not None and masks[k] is not None:
      mask = np.asarray(masks[k])
      mask = mask[..., 0] if mask.ndim == 3 else mask
      if mask.shape != img.shape[:2]:
        raise SpurjaxError(f"{out_dir}: mask of record {k} has shape {mask.shape}, image {img.shape[:2]}")
      mask_name = f"masks/{name}"
      image_io.save_png(os.path.join(tmp, mask_name), mask.astype(bool))
    meta_rows.append([f"images/{name}", int(rec["target_class"]), 0, int(place), mask_name, str(rec["source_file"])])
  for fname, header, rows in ((META_FILE, META_COLUMNS, meta_rows), (LOG_FILE, LOG_COLUMNS, log_rows)):
    with open(os.path.join(tmp, fname), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(header)
      w.writerows(rows)
  return {"n": len(records), "kept": len(meta_rows), "dir": out_dir}


def read_prune_log(out_dir: str) -> list[dict]:
  """The rows of `prune_log.csv` as dicts of strings."""
  path = os.path.join(out_dir, LOG_FILE)
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: file not found (pruning has not finished)")
  with open(path, newline="") as f:
    return list(csv.DictReader(f))
