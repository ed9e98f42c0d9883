"""CLIP tokenizer: loading, placeholder tokens, batch encoding, and an offline vocabulary.

The tokenizer itself is transformers' `CLIPTokenizer`. `write_clip_tokenizer` builds its
vocab.json / merges.txt from the CLIP BPE merge list shipped in `spurjax/assets/clip/`
(optionally truncated to a small vocabulary for tiny models), so no download is needed.
"""
from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from spurjax.errors import SpurjaxError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
FULL_VOCAB_SIZE = 49408
MIN_VOCAB_SIZE = 514  # 256 bytes + 256 end-of-word bytes + BOS + EOS
DEFAULT_MAX_LENGTH = 77
_BPE_ASSET = "assets/clip/bpe_simple_vocab_16e6.txt.gz"


def byte_symbols() -> list[str]:
  """The 256 printable symbols standing for bytes, in CLIP's vocabulary order.

  Bytes that are printable (and not space) stand for themselves; the others are mapped,
  in byte order, to code points from 256 upwards.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  symbols = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in symbols:
      symbols[b] = chr(256 + extra)
      extra += 1
  return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def _read_merges() -> list[str]:
  ref = importlib.resources.files("spurjax").joinpath(_BPE_ASSET)
  with ref.open("rb") as f:
    lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
  return lines[1:FULL_VOCAB_SIZE - MIN_VOCAB_SIZE + 1]  # line 0 is a version header


def clip_vocab(vocab_size: int | None = None) -> tuple[dict[str, int], list[str]]:
  """(vocab, merges) in the CLIP convention, truncated to `vocab_size` entries when given."""
  size = FULL_VOCAB_SIZE if vocab_size is None else vocab_size
  if not isinstance(size, int) or not MIN_VOCAB_SIZE <= size <= FULL_VOCAB_SIZE:
    raise SpurjaxError(f"CLIP tokenizer: vocab_size={vocab_size!r} must be an int in "
                       f"[{MIN_VOCAB_SIZE}, {FULL_VOCAB_SIZE}]")
  merges = _read_merges()[:size - MIN_VOCAB_SIZE]
  base = byte_symbols()
  tokens = base + [s + "</w>" for s in base] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise SpurjaxError(f"CLIP tokenizer: {_BPE_ASSET} holds duplicate merges")
  return vocab, merges


def write_clip_tokenizer(directory, vocab_size: int | None = None, pad_token: str = EOS,
                         model_max_length: int = DEFAULT_MAX_LENGTH) -> Path:
  """Writes vocab.json, merges.txt and tokenizer_config.json for a CLIPTokenizer into `directory`.

  With `vocab_size=None` this is the full 49408-token CLIP vocabulary (SD 1.x / 2.x); a smaller
  size keeps the first merges, for tiny models. `pad_token` is "<|endoftext|>" in SD 1.x and
  "!" in SD 2.x. Returns the directory.
  """
  vocab, merges = clip_vocab(vocab_size)
  if pad_token not in vocab:
    raise SpurjaxError(f"CLIP tokenizer: pad_token {pad_token!r} is not in the vocabulary")
  out = Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
  (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
  config = {
      "tokenizer_class": "CLIPTokenizer",
      "model_max_length": model_max_length,
      "bos_token": BOS,
      "eos_token": EOS,
      "unk_token": EOS,
      "pad_token": pad_token,
      "do_lower_case": True,
      "clean_up_tokenization_spaces": False,
  }
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
  return out


def load_tokenizer(path):
  """transformers' CLIPTokenizer from a tokenizer directory, or a pipeline directory holding `tokenizer/`."""
  path = Path(path)
  if not path.is_dir():
    raise SpurjaxError(f"{path}: tokenizer directory not found")
  if not _has_tokenizer_files(path) and (path / "tokenizer").is_dir():
    path = path / "tokenizer"
  if not _has_tokenizer_files(path):
    raise SpurjaxError(f"{path}: no tokenizer files (need vocab.json and merges.txt, or tokenizer.json)")
  from transformers import CLIPTokenizer
  try:
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
  except Exception as e:  # malformed files surface as many different exception types
    raise SpurjaxError(f"{path}: cannot load the CLIP tokenizer ({type(e).__name__}: {e})") from e


def _has_tokenizer_files(path: Path) -> bool:
  return (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())


def add_placeholder_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
  """Adds new tokens (e.g. "<c0>") and returns their ids, in order.

  Raises SpurjaxError if a token is empty, holds whitespace, repeats, or already exists.
  """
  tokens = list(tokens)
  vocab = tokenizer.get_vocab()
  seen = set()
  for t in tokens:
    if not isinstance(t, str) or not t or any(c.isspace() for c in t):
      raise SpurjaxError(f"placeholder token {t!r} must be a non-empty string without whitespace")
    if t in vocab or t in seen:
      raise SpurjaxError(f"placeholder token {t!r} already exists in the tokenizer; choose another")
    seen.add(t)
  added = tokenizer.add_tokens(tokens)
  if added != len(tokens):
    raise SpurjaxError(f"placeholder tokens {tokens}: only {added} could be added")
  return [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]


def encode(tokenizer, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
  """Token ids, int32 (B, max_length): BOS, tokens, EOS, then padding; long prompts are truncated
  (keeping EOS). `max_length` defaults to the tokenizer's model_max_length (77 for CLIP)."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if max_length is None:
    max_length = tokenizer.model_max_length
    if not isinstance(max_length, int) or max_length > 100_000:
      max_length = DEFAULT_MAX_LENGTH
  if max_length < 2:
    raise SpurjaxError(f"encode: max_length={max_length} must be at least 2 (BOS and EOS)")
  ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
  return np.asarray(ids, dtype=np.int32).reshape(len(prompts), max_length)
