"""Placeholder tokens in a pipeline's text encoder: adding them with initial rows, and the
diffusers textual-inversion files (`learned_embeds.safetensors` = {token: vector}) that carry
learned rows to another run or another model with the same tokenizer."""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib
from spurjax.errors import SpurjaxError

EMBEDS_FILE = "learned_embeds.safetensors"


# ----------------------------------------------------------------------------- tokens in a pipeline


def _token_ids(tokenizer, text: str) -> list[int]:
  ids = tok_lib.encode(tokenizer, [text])[0]
  special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
  body = []
  for i in ids[1:]:
    if int(i) in special:
      break
    body.append(int(i))
  return body


def initial_vectors(pipeline, words: Sequence[str]) -> list[np.ndarray]:
  """Per word, the mean embedding row of its tokens (one row for single-token words)."""
  table = np.asarray(pipeline.text_params["embeddings"]["token_embedding"]["embedding"])
  out = []
  for w in words:
    body = _token_ids(pipeline.tokenizer, w)
    if not body:
      raise SpurjaxError(f"textual inversion: initializer {w!r} has no tokens")
    out.append(table[body].mean(axis=0))
  return out


def add_tokens(pipeline, tokens: Sequence[str], init_vectors: Sequence[np.ndarray]):
  """A new Pipeline whose tokenizer knows `tokens` and whose embedding rows hold `init_vectors`.

  The input pipeline (and its tokenizer) is left untouched. Returns (pipeline, token ids).
  """
  tokenizer = copy.deepcopy(pipeline.tokenizer)
  ids = tok_lib.add_placeholder_tokens(tokenizer, tokens)
  rows = clip_text.vocab_size_of(pipeline.text_params)
  text = clip_text.resize_token_embeddings(pipeline.text_params, max(rows, max(ids) + 1))
  table = np.array(text["embeddings"]["token_embedding"]["embedding"])
  for i, v in zip(ids, init_vectors):
    table[i] = np.asarray(v, table.dtype)
  table = _placed_like(table, pipeline.text_params["embeddings"]["token_embedding"]["embedding"])
  text = {**text, "embeddings": {**text["embeddings"], "token_embedding": {"embedding": table}}}
  text_encoder = pipeline.text_encoder
  if isinstance(getattr(text_encoder, "config", None), Mapping):
    text_encoder = text_encoder.clone(config={**text_encoder.config, "vocab_size": int(table.shape[0])})
  return dataclasses.replace(pipeline, tokenizer=tokenizer, text_params=text, text_encoder=text_encoder), ids


def _placed_like(table: np.ndarray, old):
  """The grown table where the old one was: on the same devices when those were given (a pipeline the
  context placed keeps its weights there, so no later call uploads the table again); else on the host."""
  import jax
  if not isinstance(old, jax.Array) or not old.committed:
    return table
  from spurjax import sharding as shd
  return shd.put_global(table, old.sharding)


# ----------------------------------------------------------------------------- files


def save_learned_embeds(embeddings: Mapping[str, np.ndarray], path: str) -> str:
  """Writes {token: (D,) float32} as safetensors (the diffusers textual-inversion convention)."""
  from safetensors.numpy import save_file
  tensors = {str(t): np.ascontiguousarray(np.asarray(v, np.float32).reshape(-1)) for t, v in embeddings.items()}
  if not tensors:
    raise SpurjaxError(f"{path}: no embeddings to write")
  save_file(tensors, path, metadata={"format": "pt"})
  return path


def read_learned_embeds(path: str) -> dict[str, np.ndarray]:
  """{token: (D,) float32} from a learned_embeds file ((1, D) vectors are accepted too)."""
  if not os.path.isfile(path):
    raise SpurjaxError(f"{path}: textual-inversion embeddings file not found")
  from safetensors.numpy import load_file
  try:
    tensors = load_file(path)
  except Exception as e:  # corrupt headers surface as several exception types
    raise SpurjaxError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})") from None
  if not tensors:
    raise SpurjaxError(f"{path}: holds no embeddings")
  out = {}
  for token, v in tensors.items():
    v = np.asarray(v)
    if v.ndim == 2 and v.shape[0] == 1:
      v = v[0]
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.floating):
      raise SpurjaxError(f"{path}: embedding of {token!r} must be a float vector, got {v.dtype} {tuple(v.shape)}")
    if not np.all(np.isfinite(v)):
      raise SpurjaxError(f"{path}: embedding of {token!r} holds NaN or infinite values")
    out[token] = v.astype(np.float32)
  return out


def load_learned_embeds(pipeline, path: str):
  """The pipeline with the tokens of a learned_embeds file added and their rows set.

  Raises SpurjaxError naming the file when it is missing or unreadable, when a vector's
  width differs from the text encoder's, or when a token already exists.
  """
  embeds = read_learned_embeds(path)
  width = int(np.shape(pipeline.text_params["embeddings"]["token_embedding"]["embedding"])[1])
  for token, v in embeds.items():
    if v.shape[0] != width:
      raise SpurjaxError(f"{path}: embedding of {token!r} has width {v.shape[0]} but the text encoder's is "
                         f"{width} (learned for another model?)")
  try:
    pipe, _ = add_tokens(pipeline, list(embeds), list(embeds.values()))
  except SpurjaxError as e:
    raise SpurjaxError(f"{path}: {e}") from None
  return pipe


def transfer_tokens(source, target, embeds_file: str | None, where: tuple[str, str] = ("source", "target")):
  """`target` (a second model, e.g. SD-2-inpainting) with the rows learned on `source` (e.g. SD-2-base).

  The two text encoders must share embedding width and base vocabulary (same tokenizer entries), else
  a SpurjaxError names both models and what differs. Every other row of `target` is left as it was.
  """
  def width(p):
    return int(np.shape(p.text_params["embeddings"]["token_embedding"]["embedding"])[1])

  if width(source) != width(target):
    raise SpurjaxError(f"{where[0]} and {where[1]}: text encoders differ in width ({width(source)} vs "
                       f"{width(target)}); learned tokens cannot move between them")
  if embeds_file is None:
    vocab_s, vocab_t = source.tokenizer.get_vocab(), target.tokenizer.get_vocab()
  else:
    learned = set(read_learned_embeds(embeds_file))
    vocab_s = {k: v for k, v in source.tokenizer.get_vocab().items() if k not in learned}
    vocab_t = target.tokenizer.get_vocab()
  if vocab_s != vocab_t:
    raise SpurjaxError(f"{where[0]} and {where[1]}: tokenizers differ in vocabulary ({len(vocab_s)} vs "
                       f"{len(vocab_t)} entries); learned tokens cannot move between them")
  return target if embeds_file is None else load_learned_embeds(target, embeds_file)


def check_transferable(source_dir, target_dir, where: tuple[str, str] | None = None) -> None:
  """Before any work: tokens learned on the model in `source_dir` can move into `target_dir`'s text
  encoder (same embedding width in text_encoder/config.json, same tokenizer vocabulary). Reads only
  the two configs and tokenizers; a SpurjaxError names both directories and what differs."""
  from pathlib import Path

  a, b = where or (str(source_dir), str(target_dir))
  width = [int(loading.read_json(Path(d) / "text_encoder" / "config.json").get("hidden_size", -1))
           for d in (source_dir, target_dir)]
  if width[0] != width[1]:
    raise SpurjaxError(f"{a} and {b}: text encoders differ in width ({width[0]} vs {width[1]}); "
                       "learned tokens cannot move between them")
  vocab = [tok_lib.load_tokenizer(d).get_vocab() for d in (source_dir, target_dir)]
  if vocab[0] != vocab[1]:
    raise SpurjaxError(f"{a} and {b}: tokenizers differ in vocabulary ({len(vocab[0])} vs {len(vocab[1])} "
                       "entries); learned tokens cannot move between them")
