"""The DDB report: ERM vs DDB in the report schema, mask IoU, edit counts, and pictures."""
from __future__ import annotations

import json
import os

import numpy as np

from spurjax import metrics as M
from spurjax import report as R


def _section(rep: dict) -> dict:
  out = R.split_summary(rep)
  for s in out:
    out[s]["worst_class_accuracy"] = rep[s].get("worst_class_accuracy")
    out[s]["mean_group_accuracy"] = rep[s].get("mean_group_accuracy")
  out["selection"] = rep.get("selection")
  if rep.get("tie_break"):
    out["tie_break"] = rep["tie_break"]
  out["selected_epoch"] = rep.get("selected_epoch")
  if rep.get("selected_alpha") is not None:
    out["selected_alpha"] = rep["selected_alpha"]
  return out


def _read_json(path):
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return None


def build(ctx, erm_rep: dict, ddb_rep: dict, masks, edits, kept) -> dict:
  """The run's report from the stages' artefacts (`Masks`, `Edits`, `Kept`)."""
  from spurjax.ddb.prune import prune_settings
  k = ctx.table.num_classes
  gen = np.bincount([int(r["target_class"]) for r in edits.rows], minlength=k)
  kept_n = np.bincount(np.asarray(kept.table.y, np.int64), minlength=k) if len(kept.table) else np.zeros(k, int)
  crit_psi = sum(float(r["psi"]) < float(r["Psi_i"]) for r in kept.log)
  thr, score, _ = prune_settings(ctx.cfg)
  crit_rho = sum(float(r[score]) > thr for r in kept.log)
  return {
      "erm": _section(erm_rep),
      "ddb": _section(ddb_rep),
      "masks": masks.iou,
      "generated_per_class": [int(v) for v in gen],
      "kept_per_class": [int(v) for v in kept_n],
      "background_images": int(ddb_rep.get("background_images", 0)),
      "passed_probability_criterion": int(crit_psi),
      "passed_attribution_criterion": int(crit_rho),
      "diffusion_path": str(ctx.cfg.diffusion.path),
      "prune_threshold": thr,
      "prune_score": score,
      "seed": int(ctx.cfg.seed),
  }


def _pct(v):
  return "n/a" if v is None else f"{100 * v:.1f}"


def masks_line(m: dict) -> str:
  """The report's sentence on the masks (`segment/iou.json`): mean IoU of each method's own masks and, when
  `ddb.segment.box` replaces them by boxes, of the boxes too (what inpainting repaints)."""
  fmt = lambda d: ", ".join(f"{k} {v:.3f}" for k, v in (d or {}).items())  # noqa: E731
  raw, box = m.get("mean_iou_raw") or {}, m.get("mask_box", "none")
  line = f"Method `{m.get('method')}` on {m.get('num_images')} selected images with true masks; mean IoU "
  if raw and box not in (None, "none"):
    plural = {"box": "boxes"}.get(str(box), f"{box}s")
    what = "" if m.get("method") == "given" else ", what is inpainted"   # given masks are never boxed
    line += f"of the masks: {fmt(raw)}; of their {plural} (grown {m.get('mask_box_grow')} px{what}): "
  return line + fmt(m.get("mean_iou")) + " (per image: `segment/iou.json`)."


def write_markdown(workdir: str, rep: dict, table) -> None:
  L = ["# DDB vs ERM", "", f"Dataset `{table.name}`, diffusion model `{rep['diffusion_path']}`, seed {rep['seed']}.", "",
       "| method | split | worst-group acc | avg acc (train-weighted) | avg acc (plain) | selected by |",
       "|---|---|---|---|---|---|"]
  for name in ("erm", "ddb"):
    for s in ("val", "test"):
      m = rep[name].get(s)
      if m:
        L.append(f"| {name.upper()} | {s} | {_pct(m['worst_group_accuracy'])} | "
                 f"{_pct(m['average_accuracy_train_weighted'])} | {_pct(m['average_accuracy'])} | "
                 f"{rep[name]['selection']} (epoch {rep[name]['selected_epoch']}"
                 + (f", ERM mix alpha {rep[name]['selected_alpha']:g}" if "selected_alpha" in rep[name] else "")
                 + ") |")
  L += ["", "## Test accuracy per group", "", "| class (y) | attribute (place) | n | ERM | DDB |", "|---|---|---|---|---|"]
  for ge, gd in zip(rep["erm"]["test"]["groups"], rep["ddb"]["test"]["groups"]):
    cn = f" {table.class_names[ge['y']]}" if table.class_names else ""
    pn = f" {table.place_names[ge['place']]}" if table.place_names else ""
    L.append(f"| {ge['y']}{cn} | {ge['place']}{pn} | {ge['n']} | {_pct(ge['accuracy'])} | {_pct(gd['accuracy'])} |")
  L += ["", "## Counterfactuals", "", "| class | generated (as target) | kept |", "|---|---|---|"]
  for c, (g, k) in enumerate(zip(rep["generated_per_class"], rep["kept_per_class"])):
    L.append(f"| {c}{' ' + table.class_names[c] if table.class_names else ''} | {g} | {k} |")
  L.append("")
  L.append(f"Edits passing the probability criterion (psi < Psi_i): {rep['passed_probability_criterion']}; "
           f"the attribution criterion: {rep['passed_attribution_criterion']}. Log: `prune/prune_log.csv`.")
  if rep.get("background_images"):
    L.append(f"Erased backgrounds (selected images without their object, each under every class label): "
             f"{rep['background_images']}; some are in `retrain/backgrounds.png`.")
  if rep.get("masks"):
    L += ["", "## Masks", "", masks_line(rep["masks"])]
  L += ["", "Averages: *train-weighted* weights each group's accuracy by its share of the training set; *plain* is the "
        "accuracy over all examples.", "", "Plots: `plots/group_accuracy.png`, `plots/edits.png`, `plots/psi_rho.png`."]
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write("\n".join(L) + "\n")
  os.replace(tmp, os.path.join(workdir, "report.md"))


def plots(workdir: str, rep: dict, table, prune_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from spurjax.ddb.prune import read_prune_log
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  # Per-group accuracy, ERM vs DDB.
  ge, gd = rep["erm"]["test"]["groups"], rep["ddb"]["test"]["groups"]
  labels = [f"y{g['y']}/p{g['place']}" for g in ge]
  x = np.arange(len(labels))
  fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.5))
  ax.bar(x - 0.2, [g["accuracy"] or 0 for g in ge], 0.4, label="ERM")
  ax.bar(x + 0.2, [g["accuracy"] or 0 for g in gd], 0.4, label="DDB")
  ax.set_xticks(x, labels)
  ax.set_ylim(0, 1)
  ax.set_ylabel("test accuracy")
  ax.set_title("per-group test accuracy")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "group_accuracy.png"), dpi=100)
  plt.close(fig)
  log = read_prune_log(prune_dir)
  if not log:
    return
  psi = np.asarray([float(r["psi"]) for r in log])
  Psi = np.asarray([float(r["Psi_i"]) for r in log])
  rho = np.asarray([float(r["rho"]) for r in log])
  kept = np.asarray([str(r["kept"]) in ("1", "True") for r in log])
  thr = float(rep.get("prune_threshold", 0.3))
  fig, ax = plt.subplots(figsize=(4.5, 4))
  ax.scatter(psi - Psi, rho, c=np.where(kept, "tab:green", "tab:red"), s=12)
  ax.axvline(0, color="k", lw=0.8, ls="--")
  ax.axhline(thr, color="k", lw=0.8, ls=":")
  ax.set_xlabel("psi - Psi_i  (keep: < 0)")
  ax.set_ylabel(f"rho, in-mask IG toward the new class (keep: > {thr:g})")
  ax.set_title("pruning: green kept, red pruned")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "psi_rho.png"), dpi=100)
  plt.close(fig)
  maps_file = os.path.join(prune_dir, "ig_maps.npz")
  if not os.path.isfile(maps_file):
    return
  z = np.load(maps_file)
  rng = np.random.default_rng(0)
  rows = list(rng.permutation(np.nonzero(kept)[0])[:3]) + list(rng.permutation(np.nonzero(~kept)[0])[:3])
  if not rows:
    return
  fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2 * len(rows)), squeeze=False)
  for r, i in enumerate(rows):
    a = z["maps"][i]
    lim = np.abs(a).max() or 1.0
    for c, (img, title) in enumerate(((z["orig"][i], "original"), (z["mask"][i], "mask"), (z["edit"][i], "edit"),
                                      (a, "IG toward new class"))):
      ax = axes[r, c]
      ax.imshow(img, cmap="gray" if c == 1 else ("bwr" if c == 3 else None), vmin=-lim if c == 3 else None,
                vmax=lim if c == 3 else None)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=9)
    axes[r, 0].set_ylabel(f"{'kept' if kept[i] else 'pruned'}\nrho={rho[i]:.2f}", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "edits.png"), dpi=100)
  plt.close(fig)


def print_summary(rep: dict) -> None:
  for name in ("erm", "ddb"):
    if "test" in rep[name]:
      print(M.format_split(f"{name.upper()} test", rep[name]["test"]), flush=True)
  print(f"generated per class {rep['generated_per_class']}, kept per class {rep['kept_per_class']}", flush=True)
