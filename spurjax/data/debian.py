"""Debian packages as a source of files: `apt-get download` into a cache folder, `dpkg-deb -x` to unpack.

Neither needs root. A package's .deb is looked up as `<package>_*.deb` in the folder given with
`--debs` (never downloaded then) or in the cache (downloaded when absent). It is unpacked once into
`<cache>/unpacked/<deb name>/`, built in a temporary sibling folder and renamed when complete.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

from spurjax.errors import SpurjaxError

DEFAULT_CACHE = os.path.join("~", ".cache", "spurjax", "debs")


def _manual_hint(package: str) -> str:
  return (f"download it where apt works (`apt-get download {package}`, or from packages.debian.org) and pass "
          f"the folder holding its .deb with --debs DIR")


def find_deb(folder: str, package: str) -> Optional[str]:
  """The .deb of `package` in `folder` (the last by name when several), or None."""
  hits = sorted(glob.glob(os.path.join(glob.escape(folder), glob.escape(package) + "_*.deb")))
  return hits[-1] if hits else None


def download(package: str, cache: str) -> str:
  """Downloads `package`'s .deb into `cache` with `apt-get download`; returns its path."""
  apt = shutil.which("apt-get")
  if apt is None:
    raise SpurjaxError(f"photos: apt-get not found, cannot download package {package}; {_manual_hint(package)}")
  os.makedirs(cache, exist_ok=True)
  try:
    proc = subprocess.run([apt, "download", package], cwd=cache, capture_output=True, text=True, timeout=1800)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise SpurjaxError(f"photos: apt-get download {package} failed ({e}); {_manual_hint(package)}") from None
  deb = find_deb(cache, package)
  if proc.returncode != 0 or deb is None:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
    raise SpurjaxError(f"photos: apt-get download {package} failed ({why}); {_manual_hint(package)}")
  return deb


def fetch(packages: Sequence[str], cache: str, debs: Optional[str] = None) -> dict[str, str]:
  """package -> .deb path: from `debs` when given (no download), else from `cache`, downloading what is absent."""
  out = {}
  for package in packages:
    if debs is not None:
      deb = find_deb(debs, package)
      if deb is None:
        raise SpurjaxError(f"photos: no {package}_*.deb in --debs folder {debs}; {_manual_hint(package)}")
    else:
      deb = find_deb(cache, package) or download(package, cache)
    out[package] = deb
  return out


def _dpkg_deb() -> str:
  tool = shutil.which("dpkg-deb")
  if tool is None:
    raise SpurjaxError("photos: dpkg-deb not found (it unpacks the .deb files; install the dpkg package)")
  return tool


def version(deb: str) -> str:
  """The Version field of a .deb."""
  proc = subprocess.run([_dpkg_deb(), "-f", deb, "Version"], capture_output=True, text=True)
  if proc.returncode != 0:
    raise SpurjaxError(f"photos: {deb} is not a readable .deb ({(proc.stderr or '').strip() or proc.returncode})")
  return proc.stdout.strip()


def unpack(deb: str, cache: str) -> str:
  """Unpacks `deb` into `<cache>/unpacked/<its name>/` unless done before; returns that folder."""
  base = os.path.join(cache, "unpacked")
  dest = os.path.join(base, os.path.basename(deb)[:-len(".deb")])
  if os.path.isdir(dest):
    return dest
  os.makedirs(base, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(dest) + ".tmp-", dir=base)
  try:
    proc = subprocess.run([_dpkg_deb(), "-x", deb, tmp], capture_output=True, text=True)
    if proc.returncode != 0:
      raise SpurjaxError(f"photos: dpkg-deb -x {deb} failed ({(proc.stderr or '').strip() or proc.returncode})")
    try:
      os.rename(tmp, dest)
    except OSError:
      if not os.path.isdir(dest):  # else another process unpacked it first
        raise
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dest
