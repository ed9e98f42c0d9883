"""The plan of the inpaint stage: which edits to make (one per selected image, other class and
sample), the prompt of each (`ddb.inpaint.template`, e.g. "a photo of a <c_j> bird", optionally
naming one of `ddb.inpaint.attributes`), the learned tokens checked to be loaded, and the
inpainting mode a UNet can run (blended latents for a plain UNet, channels for an inpainting one).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from spurjax import rng as rng_ids
from spurjax.errors import SpurjaxError

CSV_COLUMNS = ("source_index", "source_file", "source_class", "target_class", "sample", "file", "mask_file")


GENERATORS = ("diffusion", "paste", "redraw")


# Generators that use no diffusion model (no tokens, no prompts, no model identity in the fingerprint).
MODEL_FREE = ("paste", "redraw")


MODES = ("blended", "channels", "auto")


@dataclasses.dataclass(frozen=True)
class Edit:
  """One counterfactual: image `source` (a position in the inputs) of class `source_class`, repainted as
  `target_class`, sample number `sample`."""
  source: int
  source_class: int
  target_class: int
  sample: int


def plan_edits(source_classes, num_classes: int, n_samples: int, same_class: bool = False) -> list[Edit]:
  """Every (image, other class, sample), ordered by image, then target class, then sample.

  With `same_class`, every (image, its own class, sample) instead: re-inpaints that keep the label
  (controls that carry the generator's artefacts without a change of class)."""
  if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
    raise SpurjaxError(f"config ddb.inpaint.n_samples={n_samples!r} must be a positive integer")
  if num_classes < 2:
    raise SpurjaxError(f"inpaint: needs at least 2 classes, got {num_classes}")
  out = []
  for b, c in enumerate(np.asarray(source_classes).reshape(-1)):
    c = int(c)
    if not 0 <= c < num_classes:
      raise SpurjaxError(f"inpaint: source class {c} of image {b} is not in 0..{num_classes - 1}")
    targets = [c] if same_class else [j for j in range(num_classes) if j != c]
    out += [Edit(b, c, j, s) for j in targets for s in range(int(n_samples))]
  return out


def _lookup(table, c: int, what: str):
  if isinstance(table, Mapping):
    for key in (c, str(c)):
      if key in table:
        return table[key]
    raise SpurjaxError(f"inpaint: no {what} for class {c}")
  if c >= len(table):
    raise SpurjaxError(f"inpaint: {len(table)} {what}s given for class {c}")
  return table[c]


def class_prompts(template: str, tokens, nouns, num_classes: int, attributes: Sequence[str] = ()) -> list[str]:
  """The prompts of each target class: `template` with {token} and {noun} filled in.

  A class whose token is None or "" gets the prompt without a token (no textual inversion); with
  no tokens at all (None or empty) every class does. With `attributes` (e.g. colour words) there
  are A prompts per class, class-major (prompt c * A + a), the template's {attribute} filled with
  attribute a and {a_attribute} with it and its article ("a red", "an orange").
  """
  if "{noun}" not in template and "{token}" not in template:
    raise SpurjaxError(f"config ddb.inpaint.template={template!r} must contain {{token}} and/or {{noun}}")
  attributes = tuple(str(a) for a in attributes)
  uses = "{attribute}" in template or "{a_attribute}" in template
  if uses != bool(attributes):
    raise SpurjaxError(f"config ddb.inpaint.template={template!r} and ddb.inpaint.attributes={list(attributes)}: the template uses "
                       "{attribute} / {a_attribute} exactly when attributes are given")
  out = []
  for c in range(num_classes):
    token = _lookup(tokens, c, "token") if tokens else ""
    noun = _lookup(nouns, c, "noun")
    for a in attributes or ("",):
      article = ("an " if a[:1].lower() in "aeiou" else "a ") + a if a else ""
      try:
        text = template.format(token=token or "", noun=noun, attribute=a, a_attribute=article)
      except (KeyError, IndexError, ValueError) as e:
        raise SpurjaxError(f"config ddb.inpaint.template={template!r}: {type(e).__name__} {e} (use {{token}}, {{noun}}, "
                           "{attribute}, {a_attribute})") from None
      out.append(" ".join(text.split()))
  return out


def attribute_of(seed: int, edit: "Edit", num_attributes: int) -> int:
  """The attribute (0 .. A-1) an edit's prompt takes: a function of (seed, source, target, sample) only."""
  if num_attributes <= 1:
    return 0
  ss = np.random.SeedSequence([int(seed), rng_ids.INPAINT_ATTRIBUTE, edit.source, edit.target_class, edit.sample])
  return int(ss.generate_state(1)[0] % num_attributes)


def check_tokens(pipeline, tokens) -> None:
  """Fails loudly if a learned token is missing from the tokenizer or the text encoder's embedding table.

  Without this check a textual-inversion embedding that failed to load would be tokenised as
  its characters and the edit would run silently without it.
  """
  if tokens is None:
    return
  items = tokens.items() if isinstance(tokens, Mapping) else enumerate(tokens)
  tokenizer = pipeline.tokenizer
  vocab = tokenizer.get_vocab()
  rows = None
  if getattr(pipeline, "text_params", None) is not None:
    from spurjax.diffusion import clip_text
    rows = clip_text.vocab_size_of(pipeline.text_params)
  for c, t in items:
    if not t:
      continue
    if not isinstance(t, str):
      raise SpurjaxError(f"inpaint: token of class {c} must be a string, got {type(t).__name__}")
    if t in vocab:
      if rows is not None and int(vocab[t]) >= rows:
        raise SpurjaxError(f"inpaint: token {t!r} of class {c} has id {vocab[t]} but the text encoder embeds "
                           f"only {rows} rows; the learned embedding was not loaded")
    elif t.startswith("<") or t.endswith(">"):
      raise SpurjaxError(f"inpaint: token {t!r} of class {c} is not in the tokenizer; the textual-inversion "
                         "embedding was not loaded")


def resolve_mode(mode: str, in_channels: int, latent_channels: int) -> str:
  """`ddb.inpaint.mode` for a UNet with `in_channels` inputs on `latent_channels` latents ("auto"
  resolved); a mode the UNet cannot run is a one-line SpurjaxError."""
  if mode not in MODES:
    raise SpurjaxError(f"config ddb.inpaint.mode={mode!r} must be one of {', '.join(MODES)}")
  inpaint_channels = 2 * latent_channels + 1
  if mode == "auto":
    mode = "channels" if in_channels == inpaint_channels else "blended"
  if mode == "channels" and in_channels != inpaint_channels:
    raise SpurjaxError(f"config ddb.inpaint.mode='channels' needs an inpainting UNet with {inpaint_channels} input "
                       f"channels (latents + mask + masked image); this one has {in_channels}: use 'blended'")
  if mode == "blended" and in_channels != latent_channels:
    raise SpurjaxError(f"config ddb.inpaint.mode='blended' needs a UNet with {latent_channels} input channels; "
                       f"this one has {in_channels} (an inpainting UNet): use 'channels'")
  return mode
