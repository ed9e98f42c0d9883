"""Training losses, by name. One signature serves every method:

  loss_fn(logits, batch, loss_state, cfg) -> (loss, new_loss_state, aux_metrics)

`batch` holds `label`, `group` and per-sample `weight`; `loss_state` is a method's own
pytree carried in the train state (e.g. GroupDRO's group weights), `{}` when unused.
New methods register with `@register("name", init=...)`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from spurjax.errors import SpurjaxError

_LOSSES: dict[str, tuple[Callable, Callable]] = {}


def register(name: str, init: Callable = lambda cfg, num_groups: {}):
  def deco(fn):
    _LOSSES[name] = (fn, init)
    return fn
  return deco


def get(name: str):
  """(loss_fn, init_fn(cfg, num_groups) -> loss_state)."""
  if name not in _LOSSES:
    # Methods living elsewhere register on import.
    import spurjax.baselines  # noqa: F401
  if name not in _LOSSES:
    raise SpurjaxError(f"config method.loss: unknown loss '{name}' (known: {', '.join(sorted(_LOSSES))})")
  return _LOSSES[name]


def per_sample_ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


@register("ce")
def weighted_ce(logits, batch, loss_state, cfg):
  """Mean over the batch of weight * cross-entropy (weights 1 give plain ERM)."""
  losses = per_sample_ce(logits, batch["label"])
  return jnp.mean(batch["weight"] * losses), loss_state, {}
