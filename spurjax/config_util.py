"""Loading `ml_collections` config files with `--config.key=value` overrides."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os

import ml_collections

from spurjax.errors import SpurjaxError


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py` or `path/to/config.py:arg` -> get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise SpurjaxError(f"config file not found: {path}")
  mod_spec = importlib.util.spec_from_file_location(f"spurjax_config_{abs(hash(path))}", path)
  mod = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(mod)
  except Exception as e:  # a broken config file is bad input
    raise SpurjaxError(f"{path}: cannot load config ({type(e).__name__}: {e})") from None
  if not hasattr(mod, "get_config"):
    raise SpurjaxError(f"{path}: no get_config() function")
  cfg = mod.get_config(arg) if arg else mod.get_config()
  check_layout(cfg, path)
  return cfg


def _moved(key: str) -> str | None:
  from spurjax.config_base import MOVED_KEYS
  return MOVED_KEYS.get(key)


def check_layout(cfg, where: str = "config") -> None:
  """Every key of the `ddb` group is one the base config defines: a key of the old flat layout is a
  one-line SpurjaxError naming its new place, any other unknown key one naming the key."""
  if "ddb" not in cfg:
    return
  from spurjax.config_base import base_config
  base = base_config().ddb

  def walk(node, ref, prefix):
    for k in node.keys():
      key = f"{prefix}.{k}"
      if k not in ref:
        new = _moved(key)
        if new:
          raise SpurjaxError(f"{where}: config key '{key}' moved to '{new}'")
        raise SpurjaxError(f"{where}: unknown config key '{key}'")
      if hasattr(ref[k], "keys") and hasattr(node[k], "keys"):
        walk(node[k], ref[k], key)
  walk(cfg.ddb, base, "ddb")


def _parse(raw: str, current):
  if isinstance(current, bool):
    low = raw.lower()
    if low in ("1", "true", "yes"):
      return True
    if low in ("0", "false", "no"):
      return False
    raise ValueError(f"not a boolean: {raw!r}")
  if isinstance(current, int):
    return int(raw)
  if isinstance(current, float):
    return float(raw)
  if isinstance(current, (tuple, list)):
    v = ast.literal_eval(raw)
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)
  if isinstance(current, str) or current is None:
    if current is None:
      try:
        return ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        return raw
    return raw
  return ast.literal_eval(raw)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `--config.a.b=value` strings (the `--config.` prefix is optional)."""
  for item in overrides:
    key, eq, raw = item.partition("=")
    if not eq:
      raise SpurjaxError(f"override '{item}': expected --config.key=value")
    key = key[len("--config."):] if key.startswith("--config.") else key
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
      if p not in node:
        raise SpurjaxError(_unknown(item, key))
      node = node[p]
    if parts[-1] not in node:
      raise SpurjaxError(_unknown(item, key))
    try:
      value = _parse(raw, node[parts[-1]])
    except (ValueError, SyntaxError) as e:
      raise SpurjaxError(f"override '{item}': bad value ({e})") from None
    with cfg.unlocked() if hasattr(cfg, "unlocked") else _null():
      node[parts[-1]] = value
  return cfg


def _unknown(item: str, key: str) -> str:
  new = _moved(key)
  return f"override '{item}': config key '{key}' moved to '{new}'" if new else \
      f"override '{item}': unknown config key '{key}'"


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


class CommandParser(argparse.ArgumentParser):
  """argparse, with bad arguments as a one-line SpurjaxError (exit status 2 from the CLI)."""

  def error(self, message):
    raise SpurjaxError(f"{self.prog}: {message}")



def parse_command(argv, prog: str, *, config_default: str | None = None, workdir: str | bool | None = True,
                  add_arguments=None):
  """The one command-line parser of every config-taking subcommand.

  Takes `--config FILE[:arg]` (required unless `config_default`), `--workdir` (required when
  `workdir` is True, defaulting to it when a string, optional when None, absent when False), the options that
  `add_arguments(parser)` adds, and any number of `--config.key=value` overrides. Anything else
  is a SpurjaxError.

  Returns:
    (parsed arguments, overrides): apply them with `config_from(args.config, overrides)`, or
    later, when a method's settings come first (baselines).
  """
  p = CommandParser(prog=prog)
  p.add_argument("--config", required=config_default is None, default=config_default,
                 help="config file, optionally with :arg (e.g. configs/synth.py:tiny)")
  if workdir is True:
    p.add_argument("--workdir", required=True)
  elif workdir is None:
    p.add_argument("--workdir", default=None)
  elif workdir:
    p.add_argument("--workdir", default=str(workdir))
  if add_arguments is not None:
    add_arguments(p)
  args, rest = p.parse_known_args(list(argv or []))
  bad = [r for r in rest if not (r.startswith("--config.") and "=" in r)]
  if bad:
    raise SpurjaxError(f"{prog}: unknown argument(s): {' '.join(bad)} (overrides are --config.key=value)")
  if getattr(args, "workdir", None):
    check_workdir(args.workdir)
  return args, rest


def check_workdir(path: str, key: str = "--workdir") -> None:
  """A workdir is a directory or can be made one: not an existing file, nor below one, and writable."""
  p = os.path.abspath(path)
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  if not os.path.isdir(p):
    raise SpurjaxError(f"{key} {path}: {p} is a file, not a directory")
  if not os.access(p, os.W_OK):
    raise SpurjaxError(f"{key} {path}: {p} is not writable")


def config_from(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`load_config(spec)` with `--config.key=value` overrides applied."""
  return apply_overrides(load_config(spec), list(overrides))
