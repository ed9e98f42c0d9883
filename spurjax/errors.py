"""One error type for bad user input: the CLI prints it on one line and exits 2."""
from typing import NoReturn


class SpurjaxError(Exception):
  """Bad input (file, row, key or value). The message names what is wrong, on one line."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def fail(message: str) -> NoReturn:
  raise SpurjaxError(message)
