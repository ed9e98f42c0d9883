"""Where each photograph of `spurjax data photos` comes from, and under which licence: `SOURCES.md`.

For every file used: its package and version, its path, its split, and the credit found in the
package: the matching paragraph of `usr/share/doc/<package>/copyright` (machine-readable Debian
copyright; the last paragraph whose `Files:` pattern matches the file's name), and for a Plasma
wallpaper the author and licence in its `metadata.json`. Each package's copyright file is copied
to `licenses/<package>.copyright` beside it.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Mapping, Optional, Sequence

from spurjax.data.photo_sources import Family, Item


def copyright_file(root: str, package: str) -> str:
  return os.path.join(root, "usr", "share", "doc", package, "copyright")


def _paragraphs(text: str) -> list[dict]:
  """Debian copyright paragraphs as {field: value} (continuation lines joined with spaces)."""
  out, cur, key = [], {}, None
  for line in text.splitlines() + [""]:
    if not line.strip():
      if cur:
        out.append(cur)
      cur, key = {}, None
    elif line[0] in " \t" and key:
      cur[key] += " " + line.strip()
    elif ":" in line:
      key, _, value = line.partition(":")
      key = key.strip()
      cur[key] = value.strip()
  return out


def dep5_credit(text: str, path: str) -> Optional[str]:
  """'Copyright ...; License ...' of the last paragraph whose Files: pattern matches `path`'s name."""
  name = os.path.basename(path)
  found = None
  for par in _paragraphs(text):
    for pattern in par.get("Files", "").split():
      if pattern.startswith("debian/"):
        continue
      if pattern == "*" or fnmatch.fnmatchcase(name, os.path.basename(pattern)):
        found = par
        break
  if found is None:
    return None
  return f"Copyright: {found.get('Copyright', '?')}; License: {found.get('License', '?').split(' ')[0]}"


def _plasma_credit(root: str, path: str) -> Optional[str]:
  parts = path.split("/")
  if "wallpapers" not in parts or "contents" not in parts:
    return None
  meta = os.path.join(root, *parts[:parts.index("contents")], "metadata.json")
  try:
    with open(meta) as f:
      plugin = json.load(f)["KPlugin"]
  except (OSError, ValueError, KeyError):
    return None
  authors = ", ".join(a.get("Name", "?") for a in plugin.get("Authors", []))
  return f"metadata.json: \"{plugin.get('Name', '?')}\" by {authors or '?'}, License: {plugin.get('License', '?')}"


def credit(root: str, item: Item) -> str:
  """The credit line of `item` as its unpacked package (at `root`) states it."""
  notes = []
  plasma = _plasma_credit(root, item.path)
  if plasma:
    notes.append(plasma)
  try:
    with open(copyright_file(root, item.package), encoding="utf-8", errors="replace") as f:
      dep5 = dep5_credit(f.read(), item.path)
  except OSError:
    dep5 = None
  notes.append(dep5 or f"see licenses/{item.package}.copyright")
  return " | ".join(notes)


def write_sources(out_dir: str, families: Sequence[Family], splits: Mapping[str, Mapping[str, Sequence[Item]]],
                  roots: Mapping[str, str], versions: Mapping[str, str], debs: Mapping[str, str]) -> None:
  """Writes `SOURCES.md` and `licenses/<package>.copyright` into `out_dir`."""
  os.makedirs(os.path.join(out_dir, "licenses"), exist_ok=True)
  packages = []
  for fam in families:
    for it in fam.items:
      if it.package not in packages:
        packages.append(it.package)
  lines = ["# Sources", "",
           "Every image of this benchmark is a crop of a scene photograph with one cut-out photograph pasted on it.",
           "The photographs come from these Debian packages, used as shipped:", "",
           "| package | version | .deb | files used |", "|---|---|---|---|"]
  for pkg in packages:
    used = sum(it.package == pkg for fam in families for it in fam.items)
    lines.append(f"| {pkg} | {versions.get(pkg, '?')} | {os.path.basename(debs.get(pkg, '?'))} | {used} |")
    src = copyright_file(roots[pkg], pkg)
    if os.path.isfile(src):
      shutil.copyfile(src, os.path.join(out_dir, "licenses", f"{pkg}.copyright"))
  lines += ["", "Each package's full copyright file is in `licenses/<package>.copyright`. The Tux Paint stamps'",
            "contributors are named in that package's `usr/share/doc/tuxpaint-stamps-default/changelog.gz`",
            "and the templates' in `usr/share/doc/tuxpaint-data/AUTHORS.txt.gz`."]
  for fam in families:
    lines += ["", f"## {fam.name}", "", "| split | package | file | caption phrase | credit |", "|---|---|---|---|---|"]
    for split, items in splits[fam.name].items():
      for it in items:
        lines.append(f"| {split} | {it.package} | {it.path} | {it.phrase} | {credit(roots[it.package], it)} |")
  with open(os.path.join(out_dir, "SOURCES.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
