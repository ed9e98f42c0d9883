"""Data balancing baselines (Idrissi et al., 2022) as pure `TrainSet` builders.

SUBY / SUBG: subsample every class / group once (seeded) to the size of the smallest.
RWY / RWG: keep every example, weight the loss by 1 / (class or group size), mean weight 1.
Group-balanced upsampling (GroupDRO's sampler): every group repeated up to the largest one.
"""
from __future__ import annotations

import numpy as np

from spurjax import rng as rng_ids
from spurjax.data.table import TRAIN, Table
from spurjax.errors import SpurjaxError
from spurjax.train.loop import TrainSet


def balanced_subsample(keys: np.ndarray, num_keys: int, rng: np.random.Generator) -> np.ndarray:
  """Positions into `keys`: for each key value present, a random `min count` of its positions (sorted)."""
  keys = np.asarray(keys)
  counts = np.bincount(keys, minlength=num_keys)
  present = np.nonzero(counts)[0]
  if len(present) == 0:
    return np.zeros(0, np.int64)
  m = int(counts[present].min())
  picked = [rng.permutation(np.nonzero(keys == k)[0])[:m] for k in present]
  return np.sort(np.concatenate(picked))


def balanced_upsample(keys: np.ndarray, num_keys: int, rng: np.random.Generator) -> np.ndarray:
  """Positions into `keys`: every key value present repeated to the largest count.

  Each position of a key appears `max // n` times, plus one more for a random `max % n` of them,
  so no example is dropped and every key ends with exactly `max` entries.
  """
  keys = np.asarray(keys)
  counts = np.bincount(keys, minlength=num_keys)
  present = np.nonzero(counts)[0]
  if len(present) == 0:
    return np.zeros(0, np.int64)
  m = int(counts.max())
  out = []
  for k in present:
    pos = np.nonzero(keys == k)[0]
    out.append(np.tile(pos, m // len(pos)))
    out.append(rng.permutation(pos)[:m % len(pos)])
  return np.sort(np.concatenate(out))


def balancing_weights(keys: np.ndarray, num_keys: int) -> np.ndarray:
  """Per-position weights proportional to 1 / count of its key, normalised to mean 1."""
  keys = np.asarray(keys)
  counts = np.bincount(keys, minlength=num_keys).astype(np.float64)
  w = 1.0 / counts[keys]
  return (w * len(w) / w.sum()).astype(np.float32)


def _keys(table: Table, idx: np.ndarray, by: str):
  if by == "class":
    return table.y[idx], table.num_classes
  return table.group[idx], table.num_groups


def balanced_train_set(table: Table, method: str, seed: int) -> TrainSet:
  """The TrainSet of `suby`, `rwy`, `subg` or `rwg` on the table's training split."""
  if method not in ("suby", "rwy", "subg", "rwg"):
    raise SpurjaxError(f"method '{method}': not a balancing method (suby, rwy, subg, rwg)")
  idx = table.indices(TRAIN)
  keys, num = _keys(table, idx, "class" if method.endswith("y") else "group")
  if method.startswith("sub"):
    rng = np.random.default_rng([int(seed), rng_ids.SUBSAMPLE])
    return TrainSet.from_table(table, idx[balanced_subsample(keys, num, rng)])
  return TrainSet.from_table(table, idx, balancing_weights(keys, num))


def group_upsampled_train_set(table: Table, seed: int) -> TrainSet:
  """The training split with every group upsampled to the largest group (GroupDRO's balanced batches)."""
  idx = table.indices(TRAIN)
  rng = np.random.default_rng([int(seed), rng_ids.UPSAMPLE])
  return TrainSet.from_table(table, idx[balanced_upsample(table.group[idx], table.num_groups, rng)])
