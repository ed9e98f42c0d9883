"""`spurjax bench prior`: does the prior draw what it is told?

1. A classifier (the project's trainer, `spurjax.train.loop.fit`) learns object class from
   the balanced captioned corpus (90/5/5 split by position). The strict judge (`--judge strict`,
   the default) also learns a third class, "blob": each corpus image with its object replaced
   by an object-sized colour blob (`spurjax.bench.blobs`), so a shapeless colour patch where the
   object was counts as no object; `--judge plain` is the bird / flower classifier alone, which
   has to name an object class for every patch.
2. Text-to-image: N samples per (object, scene) for "a photo of a {object} on {scene}";
   the share the classifier assigns to the prompted object.
3. Inpainting: benchmark majority training images, the region around their true object
   masks (`--mask`: by default the square around the mask's box grown by `--grow` px)
   repainted (through the mask channels of an inpainting UNet, by blended latents
   otherwise) with the *other* class's prompt: its textual-inversion token ("a photo of a
   <c1> flower"), the same prompt with the token's row left at its initialiser (the noun),
   and the class word alone ("a photo of a flower"); the share assigned to the other class.
   The same images repainted with their own class word give the same-class share. Tokens are
   learned here (`--ti-steps`) unless `--embeds` gives a learned_embeds file.
4. The prior's training speed, read from its `training.json` (images/s of its training run).

Prints a labelled table and writes sample grids (PNG) and `bench_prior.json` to --workdir. The
corpus, judge and benchmark data: `spurjax.bench.prior_data`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from typing import Callable, Sequence

import jax
import numpy as np

from spurjax.bench.common import print_table
from spurjax.bench.prior_data import (classifier_config, corpus_table, judge_table, majority_split, memory_table,
                                      object_mask, shrink_mask)
from spurjax.data.boxes import inference_mask
from spurjax.data.resize import square_box_bicubic
from spurjax.diffusion import invert, loading
from spurjax.diffusion.builtin import resolve_diffusion_path
from spurjax.diffusion.pipeline_sampling import inpaint_images, sample_images
from spurjax.diffusion.token_embeds import add_tokens, initial_vectors, load_learned_embeds
from spurjax.errors import SpurjaxError

TXT2IMG_TEMPLATE = "a photo of a {obj} on {place}"
INPAINT_TEMPLATE = "a photo of a {token} {noun}"


# ----------------------------------------------------------------------------- outputs


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def save_grid(path: str, images: np.ndarray, cols: int) -> None:
  from PIL import Image
  n, h, w, c = images.shape
  rows = -(-n // cols)
  grid = np.full((rows * h, cols * w, c), 255, np.uint8)
  for i, im in enumerate(images):
    r, k = divmod(i, cols)
    grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = im
  Image.fromarray(grid).resize((cols * w * 2, rows * h * 2), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------- the benchmark, step by step


@dataclasses.dataclass
class _Run:
  """What the steps of one benchmark run share; each step adds its table rows and record entries."""
  args: argparse.Namespace
  workdir: str
  path: str                 # the prior's directory
  pipe: loading.Pipeline
  res: int                  # the prior's resolution
  blob: int                 # the strict judge's extra class (never predicted by the plain judge)
  rows: list = dataclasses.field(default_factory=list)
  record: dict = dataclasses.field(default_factory=dict)

  @property
  def strict(self) -> bool:
    return self.args.judge == "strict"


def run(args) -> dict:
  """The benchmark's steps 1-4 (see the module docstring) for parsed `args`; returns the record it writes."""
  t_start = time.time()
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_prior_")
  os.makedirs(workdir, exist_ok=True)
  path = resolve_diffusion_path(args.prior)
  pipe = loading.load_pipeline(path)
  bench, corpus, judge_data, nouns, places = _load_data(args)
  r = _Run(args, workdir, path, pipe, invert.model_resolution(pipe), blob=corpus.num_classes)
  r.record.update(prior=path, resolution=r.res, judge=args.judge)
  classify = _train_judge(r, corpus, judge_data)                    # 1. the judge
  t_txt = _txt2img(r, corpus, nouns, places, classify)              # 2. text-to-image
  t_inp = _inpaint(r, bench, nouns, classify)                       # 3. inpainting with the other class's token
  _training_speed(r)                                                # 4. the prior's training speed
  return _report(r, t_start, t_txt, t_inp)


def _load_data(args):
  """(benchmark table, captioned corpus, the judge's data, class nouns, place names)."""
  from spurjax.data import load_table
  from spurjax.data.folder import read_folder
  if args.data:
    data_root = args.data
    bench = read_folder(data_root, verify="none")
  else:
    from spurjax.config_base import base_config
    from spurjax.data import synth_root
    d = base_config().data
    d.kind, d.synth_size = "synth", 64
    bench, data_root = load_table(d), synth_root(d)
  corpus_dir = args.corpus or os.path.join(data_root, "corpus")
  corpus = corpus_table(corpus_dir)
  judge_data = judge_table(corpus, corpus_dir, args.seed) if args.judge == "strict" else corpus
  nouns = list(bench.class_names or args.nouns.split(","))
  places = list(bench.place_names or args.places.split(","))
  if len(nouns) < corpus.num_classes or len(places) < corpus.num_places:
    raise SpurjaxError("bench prior: class / place names unknown (give --nouns and --places)")
  return bench, corpus, judge_data, nouns, places


def _train_judge(r: _Run, corpus, judge_data) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
  """A classifier of object class trained on the corpus (strict: and on blobs, a class of its own);
  returns classify(uint8 images, y, place) -> predicted classes."""
  from spurjax import models, sharding
  from spurjax.data.pipeline import ImageSource
  from spurjax.train import loop
  args = r.args
  ccfg = classifier_config(args.clf_epochs, r.res, args.clf_batch_size)
  ccfg.seed = args.seed
  judge_dir = os.path.join(r.workdir, "classifier" if args.judge == "plain" else "judge_strict")
  report = loop.fit(ccfg, judge_data, judge_dir, name="classifier")
  variables = loop.load_best_variables(ccfg, judge_data, judge_dir)
  model = models.get_model(ccfg.model.name, judge_data.num_classes)
  mesh = sharding.make_mesh()

  def classify(images_u8: np.ndarray, y: np.ndarray, place: np.ndarray) -> np.ndarray:
    tab = memory_table(images_u8, y, place, judge_data.num_classes, corpus.num_places)
    src = ImageSource(tab, loop.preprocess_from_config(ccfg))
    return loop.predict(ccfg, model, variables, src, tab, np.arange(len(tab)), mesh).argmax(-1)

  r.record["classifier_test"] = report.get("test", {})
  acc = report.get("test", {}).get("average_accuracy")
  held = "held-out corpus" + (" and its blobs" if r.strict else "")
  r.rows.append([f"judge ({args.judge}) on {held}", "own class", int(np.sum(judge_data.split == 2)), acc])
  return classify


def _txt2img(r: _Run, corpus, nouns, places, classify) -> float:
  """N samples per (object, scene); the share judged as the prompted object. Returns the sampling seconds."""
  args = r.args
  prompts, ys, ps = [], [], []
  for y in range(corpus.num_classes):
    for p in range(corpus.num_places):
      for _ in range(args.n_per_combo):
        prompts.append(TXT2IMG_TEMPLATE.format(obj=nouns[y], place=places[p]))
        ys.append(y)
        ps.append(p)
  ys, ps = np.asarray(ys), np.asarray(ps)
  t0 = time.time()
  samples = to_uint8(sample_images(r.pipe, prompts, num_steps=args.steps, guidance_scale=args.guidance,
                                   seed=args.seed))
  t_txt = time.time() - t0
  save_grid(os.path.join(r.workdir, "txt2img.png"), samples, cols=args.n_per_combo)
  pred = classify(samples, ys, ps)
  r.record["txt2img"] = {}
  for y in range(corpus.num_classes):
    for p in range(corpus.num_places):
      sel = (ys == y) & (ps == p)
      share = float(np.mean(pred[sel] == y))
      r.record["txt2img"][f"{nouns[y]} on {places[p]}"] = share
      r.rows.append([f"txt2img: {TXT2IMG_TEMPLATE.format(obj=nouns[y], place=places[p])}", nouns[y],
                     int(sel.sum()), share])
  r.rows.append(["txt2img: all prompts", "prompted", len(pred), float(np.mean(pred == ys))])
  if r.strict:
    r.record["txt2img_blob"] = float(np.mean(pred == r.blob))
    r.rows.append(["txt2img: all prompts", "blob", len(pred), r.record["txt2img_blob"]])
  return t_txt


def _class_tokens(r: _Run, bench, nouns, learn_from) -> tuple[loading.Pipeline, list[str]]:
  """The pipeline with one textual-inversion token per class (read from --embeds, else learned here)."""
  args = r.args
  tokens = [args.placeholder_fmt.format(c) for c in range(bench.num_classes)]
  if args.embeds:
    tokens_pipe = load_learned_embeds(r.pipe, args.embeds)
    missing = [t for t in tokens if t not in tokens_pipe.tokenizer.get_vocab()]
    if missing:
      raise SpurjaxError(f"{args.embeds}: no embedding for token {missing[0]}")
    return tokens_pipe, tokens
  images = {c: np.stack([bench.image(int(i)) for i in learn_from[c]]) for c in learn_from}
  ti_masks = None
  if args.ti_mask == "inpaint":  # the token learns to repaint the same regions it will be inpainted into
    ti_masks = {c: np.stack([inference_mask(shrink_mask(object_mask(bench, int(i)), r.res, 0), args.mask, args.grow)
                             for i in learn_from[c]]) for c in learn_from}
  tokens_pipe, _ = invert.learn_tokens(r.pipe, images, nouns, placeholder_fmt=args.placeholder_fmt,
                                       steps=args.ti_steps, batch=4, grad_accum=1, lr=5e-4, seed=args.seed,
                                       workdir=os.path.join(r.workdir, "ti" if ti_masks is None else "ti_inpaint"),
                                       log_every=25, ckpt_every=10**9, masks_by_class=ti_masks,
                                       mask_weight=args.ti_mask_weight)
  r.record["ti_mask"] = {"kind": args.ti_mask, "weight": args.ti_mask_weight}
  return tokens_pipe, tokens


def _inpaint_sources(r: _Run, bench, sources) -> dict:
  """The inpainting sources at the prior's resolution: uint8 images, the regions to repaint, the true
  object masks, their classes and places."""
  imgs, masks, true_masks, ys, places = [], [], [], [], []
  for c, idx in sources.items():
    for i in idx:
      imgs.append(square_box_bicubic(bench.image(int(i)), r.res))
      true_masks.append(shrink_mask(object_mask(bench, int(i)), r.res, 0))
      masks.append(inference_mask(true_masks[-1], r.args.mask, r.args.grow))
      ys.append(c)
      places.append(int(bench.place[int(i)]))
  return {"images": np.stack(imgs), "masks": np.stack(masks).astype(np.float32), "true_masks": np.stack(true_masks),
          "y": np.asarray(ys), "place": np.asarray(places)}


def _inpaint(r: _Run, bench, nouns, classify) -> float:
  """Majority images repainted with the other class's token, its initialiser, the class word, and their
  own class word; the shares judged as the prompted class. Returns the inpainting seconds."""
  args = r.args
  sources, learn_from = majority_split(bench, args.n_inpaint, args.ti_images, args.seed)
  tokens_pipe, tokens = _class_tokens(r, bench, nouns, learn_from)
  init_pipe, _ = add_tokens(r.pipe, tokens, initial_vectors(r.pipe, nouns[:bench.num_classes]))
  src = _inpaint_sources(r, bench, sources)
  src_imgs, src_masks, src_y, src_place = src["images"], src["masks"], src["y"], src["place"]
  r.record["inpaint_mask"] = {"kind": args.mask, "grow": args.grow, "mean_area": float(src_masks.mean())}
  target = (src_y + 1) % bench.num_classes
  r.record["inpaint"] = {}
  t0 = time.time()
  runs = (("learned token", tokens_pipe, target, tokens), ("initialiser token", init_pipe, target, tokens),
          ("class word", r.pipe, target, None), ("same class, class word", r.pipe, src_y, None))
  for label, p, goal, toks in runs:
    prompts = [INPAINT_TEMPLATE.format(token=toks[t] if toks else "", noun=nouns[t]).replace("  ", " ")
               for t in goal]
    out = to_uint8(inpaint_images(p, src_imgs.astype(np.float32) / 255.0, src_masks, prompts,
                                  num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed + 7))
    save_grid(os.path.join(r.workdir, f"inpaint_{label.replace(',', '').replace(' ', '_')}.png"),
              np.concatenate([src_imgs, out]), cols=len(src_imgs))
    pred = classify(out, goal, src_place)
    for c in range(bench.num_classes):
      sel = src_y == c
      t = int(goal[sel][0])
      share = float(np.mean(pred[sel] == t))
      r.record["inpaint"][f"{nouns[c]}->{nouns[t]} ({label})"] = share
      r.rows.append([f"inpaint {nouns[c]} -> '{prompts[int(np.flatnonzero(sel)[0])]}' ({label})", nouns[t],
                     int(sel.sum()), share])
    share = float(np.mean(pred == goal))
    r.record["inpaint"][f"all ({label})"] = share
    r.rows.append([f"inpaint, all sources ({label})", "prompted", len(goal), share])
    if r.strict:
      r.record["inpaint"][f"blob ({label})"] = float(np.mean(pred == r.blob))
      r.rows.append([f"inpaint, all sources ({label})", "blob", len(goal), float(np.mean(pred == r.blob))])
  t_inp = time.time() - t0
  source_pred = classify(src_imgs, src_y, src_place)
  r.rows.append(["unedited inpainting sources (sanity)", "own class", len(src_y),
                 float(np.mean(source_pred == src_y))])
  if args.diffedit_draws > 0:
    r.rows += _diffedit_rows(r.pipe, src_imgs, src["true_masks"], src_y, nouns, args, r.record, r.workdir)
  return t_inp


def _training_speed(r: _Run) -> None:
  """The prior's training speed (images/s), read from its training.json."""
  info_path = os.path.join(r.path, "training.json")
  speed = None
  if os.path.isfile(info_path):
    with open(info_path) as f:
      info = json.load(f)
    speed = (info.get("training_run") or {}).get("images_per_s") or info.get("images_per_s_this_run")
  r.record["prior_train_images_per_s"] = speed
  r.rows.append(["prior training speed (images/s, from its training.json)", "-", "-",
                 speed if speed is not None else "unknown"])


def _report(r: _Run, t_start: float, t_txt: float, t_inp: float) -> dict:
  """Prints the table and writes bench_prior.json; returns the record."""
  args = r.args
  title = (f"bench prior: {r.path} ({r.res} px) | {args.n_per_combo} samples per combo, {args.n_inpaint} inpaints "
           f"per class, {args.steps} DDIM steps, guidance {args.guidance} | txt2img {t_txt:.0f} s, inpaint "
           f"{t_inp:.0f} s, total {time.time() - t_start:.0f} s | {jax.devices()[0].platform}")
  print_table(title, ["samples", "judged as", "n", "share"], r.rows)
  r.record.update(rows=r.rows, workdir=r.workdir, seconds=round(time.time() - t_start, 1))
  with open(os.path.join(r.workdir, "bench_prior.json"), "w") as f:
    json.dump(r.record, f, indent=1, default=float)
  print(f"grids and bench_prior.json in {r.workdir}")
  return r.record


def _diffedit_rows(pipe, images_u8, true_masks, src_y, nouns, args, record, workdir: str) -> list[list]:
  """IoU of DiffEdit contrast masks (own class word vs the other's) against the true masks."""
  from spurjax.ddb.segment import diffedit
  k = len(nouns)
  src = [f"a photo of a {nouns[c]}" for c in src_y]
  tgt = [f"a photo of a {nouns[(c + 1) % k]}" for c in src_y]
  images = images_u8.astype(np.float32) / 255.0
  t0 = time.time()
  _, masks = diffedit.pipeline_contrast_masks(pipe, images, src, tgt, seed=args.seed + 11,
                                              n_draws=args.diffedit_draws, strength=args.diffedit_strength,
                                              threshold=args.diffedit_threshold)
  _, boxes = diffedit.pipeline_contrast_masks(pipe, images, src, tgt, seed=args.seed + 11,
                                              n_draws=args.diffedit_draws, strength=args.diffedit_strength,
                                              threshold=args.diffedit_threshold, box="box", box_grow=args.grow)
  refined, iou_refined = None, None
  if args.diffedit_refine:
    low, high = diffedit.parse_band(args.diffedit_refine, "bench prior: --diffedit-refine")
    _, refined = diffedit.pipeline_contrast_masks(pipe, images, src, tgt, seed=args.seed + 11,
                                                  n_draws=args.diffedit_draws, strength=args.diffedit_strength,
                                                  threshold=args.diffedit_threshold, refine=True,
                                                  refine_low=low, refine_high=high)
    iou_refined = float(diffedit.iou(refined, true_masks).mean())
  true_boxes = np.stack([inference_mask(m, "box", args.grow) > 0.5 for m in true_masks])
  iou_mask = float(diffedit.iou(masks, true_masks).mean())
  iou_box = float(diffedit.iou(boxes, true_boxes).mean())
  record["diffedit"] = {"iou_mask": iou_mask, "iou_box": iou_box, "draws": args.diffedit_draws,
                        "strength": args.diffedit_strength, "threshold": args.diffedit_threshold,
                        "iou_refined": iou_refined, "refine_band": args.diffedit_refine or None,
                        "seconds": round(time.time() - t0, 1)}
  shown = [masks] + ([refined] if refined is not None else [])
  save_grid(os.path.join(workdir, "diffedit_masks.png"),
            np.concatenate([images_u8] + [np.repeat(m[..., None] * 255, 3, -1).astype(np.uint8)
                                          for m in [true_masks] + shown]), cols=len(images_u8))
  label = f"{args.diffedit_draws} draws, strength {args.diffedit_strength}, > {args.diffedit_threshold} x mean"
  rows = [[f"DiffEdit mask IoU vs the true mask ({label})", "-", len(src_y), iou_mask]]
  if refined is not None:
    rows.append([f"DiffEdit mask + colour refinement (band {args.diffedit_refine} x mean) IoU", "-", len(src_y),
                 iou_refined])
  return rows + [["DiffEdit grown box IoU vs the true grown box", "-", len(src_y), iou_box]]


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="spurjax bench prior", description=__doc__.splitlines()[0])
  p.add_argument("--prior", default="builtin", help="diffusers directory, or 'builtin'")
  p.add_argument("--data", default="", help="Waterbirds-format folder with masks (default: the built-in benchmark)")
  p.add_argument("--corpus", default="", help="captioned corpus with y, place columns (default: DATA/corpus)")
  p.add_argument("--nouns", default="bird,flower")
  p.add_argument("--places", default="land,water")
  p.add_argument("--n-per-combo", type=int, default=16)
  p.add_argument("--n-inpaint", type=int, default=16, help="inpainted images per source class")
  p.add_argument("--steps", type=int, default=30, help="DDIM steps")
  p.add_argument("--guidance", type=float, default=3.0)
  p.add_argument("--mask", default="square", choices=("square", "box", "object"),
                 help="inpainted region: the square around the object's grown box, the box, or the mask itself")
  p.add_argument("--grow", type=int, default=2, help="pixels the object's box is grown by, at the prior's resolution")
  p.add_argument("--judge", choices=("strict", "plain"), default="strict",
                 help="strict: the judge also learns a 'blob' class (object-sized colour blobs in the object's "
                      "place), so a shapeless patch is not counted as an object; plain: bird / flower only")
  p.add_argument("--clf-epochs", type=int, default=60)
  p.add_argument("--clf-batch-size", type=int, default=64)
  p.add_argument("--diffedit-draws", type=int, default=10, help="DiffEdit noise draws (0: skip the mask IoU)")
  p.add_argument("--diffedit-strength", type=float, default=0.5)
  p.add_argument("--diffedit-threshold", type=float, default=1.5, help="in units of the map's mean")
  p.add_argument("--diffedit-refine", default="1,4", help="LOW,HIGH band (x the map's mean) of the colour "
                 "refinement, also scored ('' to skip)")
  p.add_argument("--embeds", default="", help="learned_embeds.safetensors (default: learn tokens here)")
  p.add_argument("--placeholder-fmt", default="<c{}>")
  p.add_argument("--ti-steps", type=int, default=150)
  p.add_argument("--ti-images", type=int, default=30)
  p.add_argument("--ti-mask", choices=("full", "inpaint"), default="full",
                 help="textual inversion on the whole image (full) or on the --mask regions it is inpainted into")
  p.add_argument("--ti-mask-weight", type=float, default=1.0, help="loss weight inside the mask (--ti-mask inpaint)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default="", help="outputs; a rerun reuses the trained classifier")
  args = p.parse_args(list(argv or []))
  for name in ("n_per_combo", "n_inpaint", "steps", "clf_epochs", "ti_steps", "ti_images"):
    if getattr(args, name) < 1:
      raise SpurjaxError(f"bench prior: --{name.replace('_', '-')} must be >= 1")
  if not args.ti_mask_weight > 0:
    raise SpurjaxError(f"bench prior: --ti-mask-weight must be > 0, got {args.ti_mask_weight}")
  if args.diffedit_refine:
    from spurjax.ddb.segment.diffedit import parse_band
    parse_band(args.diffedit_refine, "bench prior: --diffedit-refine")
  run(args)
  return 0
