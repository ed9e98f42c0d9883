"""The stage contract: named, fingerprinted steps whose results live in one folder each.

A `Stage` has a name, the config groups it owns, a short explicit set of shared keys it also reads
(seed, data identity, diffusion model paths, nouns), its upstream stages, a `validate(ctx)` run
before any stage computes, a `compute(ctx, inputs, folder)` that writes its files into the folder
it is given, and a `load(ctx, folder)` that reads them back as the stage's typed artefact. Its
fingerprint hashes its whole groups, its shared keys, the fingerprints of its upstream stages and
the identity of its input data (`Stage.identity`: the table's content hash, the diffusion model's
weights, ...): a key added to a stage's group is in its fingerprint without touching the stage.

`Runner.run(stage)` computes a stage into `<folder>.tmp/` (with `stage.json` naming the
fingerprint, so a killed run resumes there when nothing changed) and renames it into place; a
folder whose `stage.json` holds the current fingerprint is reused, anything else is redone, and
so is everything downstream (their fingerprints change with it). `Runner.summary()` is the one
line saying which stages were reused and which were redone, and why.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from spurjax import distributed
from spurjax.errors import SpurjaxError
from spurjax.fileio import write_json_atomic

STAGE_FILE = "stage.json"
_AROUND: list = []   # factories (stage name, ctx, inputs, folder) -> context manager, see `around_compute`


@contextlib.contextmanager
def around_compute(factory):
  """Within the block every stage a `Runner` computes runs inside `factory(name, ctx, inputs, folder)`
  (a context manager; e.g. a meter of time and memory). Stages reused from their folders are not."""
  _AROUND.append(factory)
  try:
    yield
  finally:
    _AROUND.remove(factory)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a pipeline.

  Attributes:
    name: the stage's name (and its folder's, unless the context maps it elsewhere).
    groups: the config groups the stage owns (e.g. ("ddb.select",)), each hashed whole.
    shared: other dotted config keys it reads (seed, data identity, model paths, nouns); or a
      function cfg -> such keys.
    upstream: names of the stages whose artefacts it takes (`inputs[name]`); or a function
      cfg -> such names, for a stage whose inputs depend on a setting.
    compute: (ctx, inputs, folder) -> None; writes its files into `folder` (which may hold a
      killed run's partial files with the same fingerprint, to resume from).
    load: (ctx, folder) -> artefact; reads a finished folder.
    identity: (ctx) -> JSON-able identity of input data not covered by config and upstream.
    validate: (ctx) -> None; raises a one-line SpurjaxError for bad settings before any stage runs.
  """
  name: str
  groups: Sequence[str]
  upstream: Sequence[str] | Callable[[Any], Sequence[str]]
  compute: Callable[[Any, Mapping[str, Any], str], Any]
  load: Callable[[Any, str], Any]
  shared: Sequence[str] | Callable[[Any], Sequence[str]] = ()
  identity: Callable[[Any], Any] | None = None
  validate: Callable[[Any], None] | None = None

  def upstream_of(self, cfg) -> tuple[str, ...]:
    return tuple(self.upstream(cfg) if callable(self.upstream) else self.upstream)

  def config_keys(self, cfg) -> tuple[str, ...]:
    shared = self.shared(cfg) if callable(self.shared) else self.shared
    return tuple(sorted(set(self.groups) | set(shared)))

  def check(self, ctx) -> None:
    """Every key the stage hashes exists; then the stage's own `validate`."""
    config_values(ctx.cfg, self.config_keys(ctx.cfg))
    if self.validate is not None:
      self.validate(ctx)


def _plain(v):
  """Config values as JSON: ConfigDicts as dicts, tuples as lists."""
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, Mapping):
    return {str(k): _plain(x) for k, x in sorted(v.items())}
  if isinstance(v, (tuple, list)):
    return [_plain(x) for x in v]
  if isinstance(v, (str, int, float, bool)) or v is None:
    return v
  return str(v)


def config_values(cfg, keys: Sequence[str]) -> dict:
  """{key: value} of dotted `keys` in `cfg`; a key the config lacks is a SpurjaxError."""
  out = {}
  for key in keys:
    node = cfg
    for part in key.split("."):
      if part not in node:
        raise SpurjaxError(f"config key '{key}' is missing (the base config defines every stage key)")
      node = node[part]
    out[key] = _plain(node)
  return out


def fingerprint(stage: Stage, ctx, upstream: Mapping[str, str]) -> tuple[str, dict]:
  """(hex digest, the JSON record it hashes) of `stage` in `ctx` with upstream fingerprints."""
  record = {
      "stage": stage.name,
      "config": config_values(ctx.cfg, stage.config_keys(ctx.cfg)),
      "upstream": {u: upstream[u] for u in stage.upstream_of(ctx.cfg)},
      "data": _plain(stage.identity(ctx)) if stage.identity is not None else None,
  }
  digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
  return digest, record


def read_stage_file(folder: str) -> dict | None:
  try:
    with open(os.path.join(folder, STAGE_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _why(old: dict | None, record: dict) -> str:
  """Which part of the record changed, in a few words."""
  if old is None:
    return "new"
  prev = old.get("record", {})
  old_cfg, new_cfg = prev.get("config", {}), record["config"]
  both = set(old_cfg) & set(new_cfg)
  changed = _changed_leaves({k: old_cfg[k] for k in both}, {k: new_cfg[k] for k in both}) \
      or _changed_leaves(old_cfg, new_cfg)  # else the keys read changed with a setting
  if changed:
    return "changed " + ",".join(changed)
  ups = [u for u, fp in record["upstream"].items() if prev.get("upstream", {}).get(u) != fp]
  if ups:
    return "upstream " + ",".join(ups)
  if prev.get("data") != record["data"]:
    return "input data changed"
  return "changed"


def _changed_leaves(old, new, prefix: str = "") -> list[str]:
  """Dotted paths of the values that differ between two JSON records (groups compared leaf by leaf)."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _changed_leaves(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}")
  return out


def _remove_own(folder: str) -> None:
  """Removes a stage folder; refuses one spurjax did not write (no stage.json)."""
  if not os.path.isdir(folder):
    return
  if read_stage_file(folder) is None and os.listdir(folder):
    raise SpurjaxError(f"{folder}: exists and is not a spurjax stage folder (no {STAGE_FILE}); "
                       "move it away or choose another workdir")
  shutil.rmtree(folder)


class Runner:
  """Runs stages in the order asked, each at most once, reusing folders whose fingerprint matches.

  `ctx` must have `cfg` and `stage_dir(name)`. Artefacts and fingerprints of the stages run so
  far are in `artefacts` / `fingerprints`; `provide` adds an artefact made elsewhere.
  """

  def __init__(self, ctx, verbose: bool = True):
    self.ctx = ctx
    self.verbose = verbose
    self.artefacts: dict[str, Any] = {}
    self.fingerprints: dict[str, str] = {}
    self.reused: list[str] = []
    self.redone: list[tuple[str, str]] = []
    self.seconds: dict[str, float] = {}  # wall time of each stage this runner computed

  def provide(self, name: str, artefact, fingerprint_: str) -> None:
    """Uses `artefact` as stage `name`'s result (fingerprint given by the caller)."""
    self.artefacts[name] = artefact
    self.fingerprints[name] = str(fingerprint_)

  def run(self, stage: Stage):
    names = stage.upstream_of(self.ctx.cfg)
    missing = [u for u in names if u not in self.artefacts]
    if missing:
      raise SpurjaxError(f"stage {stage.name}: upstream stage(s) {', '.join(missing)} have not run")
    fp, record = fingerprint(stage, self.ctx, self.fingerprints)
    folder = self.ctx.stage_dir(stage.name)
    tmp = folder + ".tmp"
    old = read_stage_file(folder)
    done = distributed.from_main(old is not None and old.get("fingerprint") == fp)
    inputs = {u: self.artefacts[u] for u in names}
    if done:
      self.reused.append(stage.name)
      art = stage.load(self.ctx, folder)
    else:
      self.redone.append((stage.name, _why(old, record)))
      if distributed.is_main():
        if (read_stage_file(tmp) or {}).get("fingerprint") != fp:  # a killed run of other settings
          _remove_own(tmp)
        os.makedirs(tmp, exist_ok=True)
        write_json_atomic(os.path.join(tmp, STAGE_FILE), {"fingerprint": fp, "record": record, "complete": False})
      distributed.barrier(f"{stage.name}_start")
      with contextlib.ExitStack() as around:
        for factory in list(_AROUND):
          around.enter_context(factory(stage.name, self.ctx, inputs, tmp))
        start = time.perf_counter()
        stage.compute(self.ctx, inputs, tmp)
        self.seconds[stage.name] = time.perf_counter() - start
      if distributed.is_main():
        write_json_atomic(os.path.join(tmp, STAGE_FILE), {"fingerprint": fp, "record": record, "complete": True,
                                                    "seconds": round(self.seconds[stage.name], 1)})
        _remove_own(folder)
        os.replace(tmp, folder)
      distributed.barrier(f"{stage.name}_done")
      art = stage.load(self.ctx, folder)  # one way to an artefact: read from the final folder
    self.artefacts[stage.name] = art
    self.fingerprints[stage.name] = fp
    return art

  def summary(self) -> str:
    parts = []
    if self.reused:
      parts.append("reused " + ", ".join(self.reused))
    if self.redone:
      parts.append("redid " + ", ".join(f"{n} ({why})" for n, why in self.redone))
    return "stages: " + ("; ".join(parts) if parts else "none run")

  def timing(self) -> str:
    """One line with the wall time of each stage computed by this runner ("" when none was)."""
    if not self.seconds:
      return ""
    parts = ", ".join(f"{n} {s:.0f} s" for n, s in self.seconds.items())
    return f"stage wall time: {parts} (total {sum(self.seconds.values()):.0f} s)"

  def report(self) -> None:
    if self.verbose and distributed.is_main():
      print(self.summary(), flush=True)
      line = self.timing()
      if line:
        print(line, flush=True)


# ---------------------------------------------------------------- identities of input data


def table_digest(table) -> str:
  """Content hash of a dataset table: file references, labels, attributes, splits, masks."""
  h = hashlib.sha256()
  h.update(str(table.name).encode())
  for arr in (table.y, table.place, table.split):
    h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
  for refs in (table.refs, table.mask_refs or ()):
    for r in refs:
      h.update(_ref_identity(r).encode())
      h.update(b"\0")
  return h.hexdigest()[:16]


def _ref_identity(ref) -> str:
  """A file's base name and size (a path that moved keeps its identity), else the reference's text."""
  if isinstance(ref, (str, os.PathLike)) and os.path.isfile(ref):
    return f"{os.path.basename(ref)}:{os.path.getsize(ref)}"
  return str(ref)


def file_digest(path: str) -> str:
  """Content hash of one file (a missing file is a SpurjaxError naming it)."""
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: file not found")
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()[:16]


_DOC_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".jsonl")


def _model_file(rel: str) -> bool:
  """Whether a file of a model directory is part of the model: `model_index.json` and the component
  folders' files (configs, weights, vocabularies), not READMEs, pictures, logs or top-level records."""
  if rel.lower().endswith(_DOC_SUFFIXES):
    return False
  return os.sep in rel or rel == "model_index.json"


def directory_digest(path: str, chunk: int = 1 << 20) -> str:
  """Identity of a model directory: the content of its JSON and text files and each weight file's
  size and first / last MiB (whole multi-GB checkpoints are not read). Documentation and training
  records (READMEs, pictures, loss logs, top-level files other than `model_index.json`) are left
  out, so editing them does not redo the stages that used the model."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      p = os.path.join(root, name)
      rel = os.path.relpath(p, path)
      if not _model_file(rel):
        continue
      size = os.path.getsize(p)
      h.update(f"{rel}:{size}".encode())
      with open(p, "rb") as f:
        if name.endswith((".json", ".txt")) or size <= 2 * chunk:
          h.update(f.read())
        else:
          h.update(f.read(chunk))
          f.seek(size - chunk)
          h.update(f.read(chunk))
  return h.hexdigest()[:16]


def tree_digest(tree) -> str:
  """Content hash of a pytree of arrays (for models given in memory rather than as a directory)."""
  import jax
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]
