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

Prints a labelled table and writes sample grids (PNG) and `bench_prior.json` to --workdir.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from spurjax.bench.common import print_table
from spurjax.data.table import TRAIN, Table
from spurjax.diffusion import invert, loading, prior
from spurjax.errors import SpurjaxError

TXT2IMG_TEMPLATE = "a photo of a {obj} on {place}"
INPAINT_TEMPLATE = "a photo of a {token} {noun}"


# ----------------------------------------------------------------------------- data


def corpus_table(root: str) -> Table:
  """The captioned corpus (file_name, text, y, place) as a Table: every 20th row val, the next test."""
  from spurjax.data.images import read_image
  paths, texts = prior.read_imagefolder(root)
  meta = os.path.join(root, "metadata.csv")
  if not os.path.isfile(meta):
    raise SpurjaxError(f"{meta}: the benchmark needs a metadata.csv with y and place columns")
  with open(meta, newline="") as f:
    rows = list(csv.DictReader(f))
  for c in ("y", "place"):
    if c not in rows[0]:
      raise SpurjaxError(f"{meta}: missing column '{c}' (the benchmark needs object and scene labels)")
  try:
    y = np.asarray([int(r["y"]) for r in rows], np.int32)
    place = np.asarray([int(r["place"]) for r in rows], np.int32)
  except ValueError as e:
    raise SpurjaxError(f"{meta}: y / place must be integers ({e})") from None
  pos = np.arange(len(rows)) % 20
  split = np.where(pos == 0, 1, np.where(pos == 1, 2, 0)).astype(np.int32)
  return Table(name="corpus", refs=paths, y=y, place=place, split=split, num_classes=int(y.max()) + 1,
               num_places=int(place.max()) + 1, read_image=read_image, captions=texts)


def judge_table(corpus: Table, root: str, seed: int) -> Table:
  """The strict judge's data: the corpus (half its objects with pixel noise) plus one blob image per
  corpus image (class K, same split), in memory. Needs the corpus's object masks."""
  from spurjax.bench import blobs
  from spurjax.data.images import read_image
  mask_paths = prior.read_mask_paths(root)
  if mask_paths is None:
    raise SpurjaxError(f"{root}: --judge strict needs the corpus's object masks (column {prior.MASK_COLUMN})")
  images, y, place, split = [], [], [], []
  for i in range(len(corpus)):
    img = read_image(corpus.refs[i])
    m = np.asarray(Image.open(mask_paths[i]).convert("L")) > 0
    if m.shape != img.shape[:2] or not m.any():
      raise SpurjaxError(f"{mask_paths[i]}: mask empty or not the size of its image {corpus.refs[i]}")
    s = int(seed) * 1_000_003 + i
    images += [blobs.noisy_object(img, m, s) if i % 2 else img, blobs.blob_image(img, m, s)]
    y += [int(corpus.y[i]), corpus.num_classes]
    place += [int(corpus.place[i])] * 2
    split += [int(corpus.split[i])] * 2
  arr = np.stack(images)
  return Table(name="corpus+blobs", refs=list(range(len(arr))), y=np.asarray(y, np.int32),
               place=np.asarray(place, np.int32), split=np.asarray(split, np.int32),
               num_classes=corpus.num_classes + 1, num_places=corpus.num_places, read_image=lambda i: arr[i])


def memory_table(images: np.ndarray, y: np.ndarray, place: np.ndarray, num_classes: int, num_places: int) -> Table:
  """In-memory uint8 images as a test-split Table."""
  n = len(images)
  return Table(name="samples", refs=list(range(n)), y=np.asarray(y, np.int32), place=np.asarray(place, np.int32),
               split=np.full(n, 2, np.int32), num_classes=num_classes, num_places=num_places,
               read_image=lambda i: images[i])


def classifier_config(epochs: int, image_size: int, batch_size: int = 64):
  from spurjax.config_base import base_config
  c = base_config()
  c.data.image_size = image_size
  c.data.resize = image_size
  c.data.crop_scale = (0.8, 1.0)
  c.data.cache = True
  c.data.num_threads = 2
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.model.name = "cnn16"
  c.optim.lr = 0.02
  c.optim.schedule = "cosine"
  c.train.batch_size = batch_size
  c.train.eval_batch_size = 128
  c.train.num_epochs = epochs
  c.train.select = "val_avg"
  return c


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


def _object_mask(bench, i: int) -> np.ndarray:
  m = bench.mask(i)
  if m is None:
    raise SpurjaxError(f"{bench.name}: image {bench.refs[i]} has no object mask")
  return m


def _shrink_mask(mask: np.ndarray, size: int, dilate: int) -> np.ndarray:
  from PIL import Image
  m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BOX)) >= 64
  for _ in range(dilate):
    p = np.pad(m, 1)
    m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
  return m


# ----------------------------------------------------------------------------- the benchmark


def run(args) -> dict:
  t_start = time.time()
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_prior_")
  os.makedirs(workdir, exist_ok=True)
  path = prior.resolve_diffusion_path(args.prior)
  pipe = loading.load_pipeline(path)
  res = invert.model_resolution(pipe)

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

  # 1. The judge: a classifier of object class trained on the corpus (strict: and on blobs, a class of its own).
  from spurjax.train import loop
  ccfg = classifier_config(args.clf_epochs, res, args.clf_batch_size)
  ccfg.seed = args.seed
  judge_dir = os.path.join(workdir, "classifier" if args.judge == "plain" else "judge_strict")
  report = loop.fit(ccfg, judge_data, judge_dir, name="classifier")
  variables = loop.load_best_variables(ccfg, judge_data, judge_dir)
  from spurjax import models, sharding
  model = models.get_model(ccfg.model.name, judge_data.num_classes)
  mesh = sharding.make_mesh()

  def classify(images_u8: np.ndarray, y: np.ndarray, place: np.ndarray) -> np.ndarray:
    tab = memory_table(images_u8, y, place, judge_data.num_classes, corpus.num_places)
    from spurjax.data.pipeline import ImageSource
    src = ImageSource(tab, loop.preprocess_from_config(ccfg))
    return loop.predict(ccfg, model, variables, src, tab, np.arange(len(tab)), mesh).argmax(-1)

  rows, record = [], {"prior": path, "resolution": res, "judge": args.judge, "classifier_test": report.get("test", {})}
  acc = report.get("test", {}).get("average_accuracy")
  held = "held-out corpus" + (" and its blobs" if args.judge == "strict" else "")
  rows.append([f"judge ({args.judge}) on {held}", "own class", int(np.sum(judge_data.split == 2)), acc])
  blob = corpus.num_classes  # the strict judge's extra class (never predicted by the plain judge)

  # 2. Text-to-image.
  prompts, ys, ps = [], [], []
  for y in range(corpus.num_classes):
    for p in range(corpus.num_places):
      for _ in range(args.n_per_combo):
        prompts.append(TXT2IMG_TEMPLATE.format(obj=nouns[y], place=places[p]))
        ys.append(y)
        ps.append(p)
  ys, ps = np.asarray(ys), np.asarray(ps)
  t0 = time.time()
  samples = to_uint8(prior.sample_images(pipe, prompts, num_steps=args.steps, guidance_scale=args.guidance,
                                         seed=args.seed))
  t_txt = time.time() - t0
  save_grid(os.path.join(workdir, "txt2img.png"), samples, cols=args.n_per_combo)
  pred = classify(samples, ys, ps)
  record["txt2img"] = {}
  for y in range(corpus.num_classes):
    for p in range(corpus.num_places):
      sel = (ys == y) & (ps == p)
      share = float(np.mean(pred[sel] == y))
      record["txt2img"][f"{nouns[y]} on {places[p]}"] = share
      rows.append([f"txt2img: {TXT2IMG_TEMPLATE.format(obj=nouns[y], place=places[p])}", nouns[y],
                   int(sel.sum()), share])
  rows.append(["txt2img: all prompts", "prompted", len(pred), float(np.mean(pred == ys))])
  if args.judge == "strict":
    record["txt2img_blob"] = float(np.mean(pred == blob))
    rows.append(["txt2img: all prompts", "blob", len(pred), record["txt2img_blob"]])

  # 3. Inpainting majority images with the other class's token.
  sources, learn_from = _majority_split(bench, args.n_inpaint, args.ti_images, args.seed)
  if args.embeds:
    tokens_pipe = invert.load_learned_embeds(pipe, args.embeds)
    tokens = [args.placeholder_fmt.format(c) for c in range(bench.num_classes)]
    missing = [t for t in tokens if t not in tokens_pipe.tokenizer.get_vocab()]
    if missing:
      raise SpurjaxError(f"{args.embeds}: no embedding for token {missing[0]}")
  else:
    images = {c: np.stack([bench.image(int(i)) for i in learn_from[c]]) for c in learn_from}
    ti_masks = None
    if args.ti_mask == "inpaint":  # the token learns to repaint the same regions it will be inpainted into
      ti_masks = {c: np.stack([prior.inference_mask(_shrink_mask(_object_mask(bench, int(i)), res, 0), args.mask,
                                                    args.grow) for i in learn_from[c]]) for c in learn_from}
    tokens_pipe, _ = invert.learn_tokens(pipe, images, nouns, placeholder_fmt=args.placeholder_fmt,
                                         steps=args.ti_steps, batch=4, grad_accum=1, lr=5e-4, seed=args.seed,
                                         workdir=os.path.join(workdir, "ti" if ti_masks is None else "ti_inpaint"),
                                         log_every=25, ckpt_every=10**9, masks_by_class=ti_masks,
                                         mask_weight=args.ti_mask_weight)
    record["ti_mask"] = {"kind": args.ti_mask, "weight": args.ti_mask_weight}
    tokens = [args.placeholder_fmt.format(c) for c in range(bench.num_classes)]
  init_pipe, _ = invert.add_tokens(pipe, tokens, invert.initial_vectors(pipe, nouns[:bench.num_classes]))
  src_imgs, src_masks, true_masks, src_y, src_place = [], [], [], [], []
  for c, idx in sources.items():
    for i in idx:
      src_imgs.append(prior.resize_image(bench.image(int(i)), res))
      true_masks.append(_shrink_mask(_object_mask(bench, int(i)), res, 0))
      src_masks.append(prior.inference_mask(true_masks[-1], args.mask, args.grow))
      src_y.append(c)
      src_place.append(int(bench.place[int(i)]))
  src_imgs, src_masks = np.stack(src_imgs), np.stack(src_masks).astype(np.float32)
  src_y, src_place = np.asarray(src_y), np.asarray(src_place)
  record["inpaint_mask"] = {"kind": args.mask, "grow": args.grow, "mean_area": float(src_masks.mean())}
  target = (src_y + 1) % bench.num_classes
  record["inpaint"] = {}
  t0 = time.time()
  runs = (("learned token", tokens_pipe, target, tokens), ("initialiser token", init_pipe, target, tokens),
          ("class word", pipe, target, None), ("same class, class word", pipe, src_y, None))
  for label, p, goal, toks in runs:
    prompts = [INPAINT_TEMPLATE.format(token=toks[t] if toks else "", noun=nouns[t]).replace("  ", " ")
               for t in goal]
    out = to_uint8(prior.inpaint_images(p, src_imgs.astype(np.float32) / 255.0, src_masks, prompts,
                                        num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed + 7))
    save_grid(os.path.join(workdir, f"inpaint_{label.replace(',', '').replace(' ', '_')}.png"),
              np.concatenate([src_imgs, out]), cols=len(src_imgs))
    pred = classify(out, goal, src_place)
    for c in range(bench.num_classes):
      sel = src_y == c
      t = int(goal[sel][0])
      share = float(np.mean(pred[sel] == t))
      record["inpaint"][f"{nouns[c]}->{nouns[t]} ({label})"] = share
      rows.append([f"inpaint {nouns[c]} -> '{prompts[int(np.flatnonzero(sel)[0])]}' ({label})", nouns[t],
                   int(sel.sum()), share])
    share = float(np.mean(pred == goal))
    record["inpaint"][f"all ({label})"] = share
    rows.append([f"inpaint, all sources ({label})", "prompted", len(goal), share])
    if args.judge == "strict":
      record["inpaint"][f"blob ({label})"] = float(np.mean(pred == blob))
      rows.append([f"inpaint, all sources ({label})", "blob", len(goal), float(np.mean(pred == blob))])
  t_inp = time.time() - t0
  source_pred = classify(src_imgs, src_y, src_place)
  rows.append(["unedited inpainting sources (sanity)", "own class", len(src_y), float(np.mean(source_pred == src_y))])
  if args.diffedit_draws > 0:
    rows += _diffedit_rows(pipe, src_imgs, np.stack(true_masks), src_y, nouns, args, record, workdir)
  info_path = os.path.join(path, "training.json")
  speed = None
  if os.path.isfile(info_path):
    with open(info_path) as f:
      info = json.load(f)
    speed = (info.get("training_run") or {}).get("images_per_s") or info.get("images_per_s_this_run")
  record["prior_train_images_per_s"] = speed
  rows.append(["prior training speed (images/s, from its training.json)", "-", "-",
               speed if speed is not None else "unknown"])

  title = (f"bench prior: {path} ({res} px) | {args.n_per_combo} samples per combo, {args.n_inpaint} inpaints per "
           f"class, {args.steps} DDIM steps, guidance {args.guidance} | txt2img {t_txt:.0f} s, inpaint {t_inp:.0f} s, "
           f"total {time.time() - t_start:.0f} s | {jax.devices()[0].platform}")
  print_table(title, ["samples", "judged as", "n", "share"], rows)
  record.update(rows=rows, workdir=workdir, seconds=round(time.time() - t_start, 1))
  with open(os.path.join(workdir, "bench_prior.json"), "w") as f:
    json.dump(record, f, indent=1, default=float)
  print(f"grids and bench_prior.json in {workdir}")
  return record


def _diffedit_rows(pipe, images_u8, true_masks, src_y, nouns, args, record, workdir: str) -> list[list]:
  """IoU of DiffEdit contrast masks (own class word vs the other's) against the true masks."""
  from spurjax.ddb import diffedit
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
  true_boxes = np.stack([prior.inference_mask(m, "box", args.grow) > 0.5 for m in true_masks])
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


def _majority_split(table: Table, n_sources: int, n_learn: int, seed: int):
  """Per class, disjoint sets of majority-group training indices: inpainting sources and TI images."""
  train = table.indices(TRAIN)
  rng = np.random.default_rng([seed, 5])
  sources, learn = {}, {}
  for c in range(table.num_classes):
    idx = train[table.y[train] == c]
    counts = np.bincount(table.place[idx], minlength=table.num_places)
    idx = rng.permutation(idx[table.place[idx] == int(np.argmax(counts))])
    if len(idx) < n_sources + 1:
      raise SpurjaxError(f"{table.name}: class {c} has only {len(idx)} majority training images")
    sources[c], learn[c] = idx[:n_sources], idx[n_sources:n_sources + n_learn]
  return sources, learn


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
    from spurjax.ddb.diffedit import parse_band
    parse_band(args.diffedit_refine, "bench prior: --diffedit-refine")
  run(args)
  return 0
