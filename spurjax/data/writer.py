"""How the built-in generators (`spurjax.data.synth`, `spurjax.data.broad`) write a dataset folder.

A folder is built in a sibling `<out>.tmp-*` folder and renamed into place when complete
(`staged_folder`), so a reader never sees half a dataset. Its images are drawn and written in
chunks, in spawned processes when there are many (`write_images`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import multiprocessing
import os
import shutil
import tempfile
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from spurjax.errors import SpurjaxError


def default_workers() -> int:
  """Render processes when the command line names none: min(4, CPU count)."""
  return min(4, os.cpu_count() or 1)


def check_target(out_dir: str, overwrite: bool, prog: str) -> None:
  """Refuses an `out_dir` that is not a folder, or is a non-empty one without `overwrite`."""
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise SpurjaxError(f"{prog}: output path exists and is not a folder: {out_dir}")
    if os.listdir(out_dir) and not overwrite:
      raise SpurjaxError(f"{prog}: output folder exists and is not empty: {out_dir} (use --overwrite)")


def _publish(tmp: str, out_dir: str, overwrite: bool, prog: str) -> None:
  """Moves the finished folder `tmp` to `out_dir` (replacing an old one only with `overwrite`)."""
  check_target(out_dir, overwrite, prog)  # it may have appeared while `tmp` was written
  if os.path.isdir(out_dir):
    old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(os.path.abspath(out_dir)))
    os.rename(out_dir, os.path.join(old, "data"))
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out_dir)


@contextlib.contextmanager
def staged_folder(out_dir: str, overwrite: bool, prog: str) -> Iterator[str]:
  """Yields an empty sibling temp folder of `out_dir` to write into; renames it to `out_dir` when the
  block ends, or removes it when the block fails. `out_dir` must be absent or empty unless `overwrite`
  (`prog` names the generator in errors)."""
  out_dir = os.path.abspath(out_dir)
  check_target(out_dir, overwrite, prog)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
  try:
    yield tmp
    _publish(tmp, out_dir, overwrite, prog)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_csv(path: str, header: Sequence[str], rows) -> None:
  """Writes a CSV file: the header line, then one line per row."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _write_chunk(root: str, draw: Callable, args: tuple, jobs: Sequence[tuple]) -> list:
  extras = []
  for index, y, place, image_rel, mask_rel in jobs:
    image, mask, extra = draw(*args, index, y, place)
    Image.fromarray(image).save(os.path.join(root, image_rel), compress_level=1)
    if mask_rel is not None:
      Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(root, mask_rel), compress_level=1)
    extras.append(extra)
  return extras


def write_images(root: str, draw: Callable, args: tuple, jobs: list, workers: int) -> list:
  """Draws and writes every job `(index, y, place, image_rel, mask_rel | None)` under `root`.

  `draw(*args, index, y, place)` returns (uint8 HWC image, bool HW mask, extra); the image and the
  mask (0/255, when `mask_rel` is given) go to PNG files, and the extras come back in job order.
  With `workers` > 1 and at least 200 jobs, chunks run in spawned processes (`draw` must be a
  module-level function, and a calling script needs an `if __name__ == "__main__":` guard).
  """
  if workers <= 1 or len(jobs) < 200:
    return _write_chunk(root, draw, args, jobs)
  size = max(50, len(jobs) // (workers * 8))
  chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
  # spawn: the parent may already have started JAX threads, which fork does not survive.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    results = pool.map(_write_chunk, *zip(*[(root, draw, args, c) for c in chunks]))
    return [x for chunk in results for x in chunk]
