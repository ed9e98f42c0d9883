"""Console output of the training loops: tqdm bars and lines, from process 0 only."""
from __future__ import annotations

from typing import Iterable, Optional

import jax
from tqdm import tqdm


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
        leave: bool = True, initial: int = 0, disable: bool = False, mininterval: float = 0.1) -> tqdm:
  """A tqdm bar over `iterable`; silent where `disable` and on every process but the first."""
  return tqdm(iterable, total=total, desc=desc, leave=leave, initial=initial, mininterval=mininterval,
              disable=disable or jax.process_index() != 0)


def say(line: str) -> None:
  """Prints `line` above any open bar (process 0 only)."""
  if jax.process_index() == 0:
    tqdm.write(line)
