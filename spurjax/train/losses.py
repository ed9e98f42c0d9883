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
import numpy as np
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
    raise SpurjaxError(f"config method.loss: unknown loss '{name}' (known: {', '.join(sorted(_LOSSES))})")
  return _LOSSES[name]


def per_sample_ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


@register("ce")
def weighted_ce(logits, batch, loss_state, cfg):
  """Mean over the batch of weight * cross-entropy (weights 1 give plain ERM)."""
  losses = per_sample_ce(logits, batch["label"])
  return jnp.mean(batch["weight"] * losses), loss_state, {}


# ---------------------------------------------------------------- GroupDRO
# Sagawa et al., 2020: online group-weighted loss. Per step: mean loss of each group present in
# the batch, exponentiated-gradient update of the group weights q (kept in the loss state) with
# step size `method.dro_eta` and the generalisation adjustment `method.dro_adj / sqrt(n_g)`, then
# loss = sum_g q_g * loss_g. Groups absent from a batch keep their weight; the mass of the present
# groups is renormalised among themselves. As in the published runs (`--reweight_groups`), the
# baseline runner trains it on group-balanced batches (`method.dro_balanced`).


def adjustment(adj: float, group_counts, num_groups: int) -> np.ndarray:
  """C / sqrt(n_g) per group (zeros when C is 0)."""
  if not adj:
    return np.zeros(num_groups, np.float32)
  if group_counts is None or len(group_counts) != num_groups:
    raise SpurjaxError(f"config method.dro_adj={adj} needs the {num_groups} training group counts "
                       "(method.group_counts)")
  n = np.maximum(np.asarray(group_counts, np.float64), 1.0)
  return (float(adj) / np.sqrt(n)).astype(np.float32)


def group_dro_init(cfg, num_groups: int) -> dict:
  """Uniform group weights and the fixed adjustment vector."""
  adj = adjustment(float(cfg.get("dro_adj", 0.0)), cfg.get("group_counts", None), num_groups)
  return {"q": jnp.full((num_groups,), 1.0 / num_groups, jnp.float32), "adj": jnp.asarray(adj)}


def group_mean_losses(per_sample, groups, num_groups: int):
  """(mean loss per group, count per group) over one batch; 0 loss where a group is absent."""
  onehot = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32)
  counts = onehot.sum(0)
  sums = per_sample.astype(jnp.float32) @ onehot
  return sums / jnp.maximum(counts, 1.0), counts


def update_weights(q, group_loss, present, eta: float, adj):
  """q_g <- q_g exp(eta (loss_g + adj_g)) for present groups, renormalised to their old total mass."""
  expo = jnp.where(present, eta * (group_loss + adj), 0.0)
  expo = expo - jnp.max(jnp.where(present, expo, -jnp.inf), initial=0.0)  # overflow guard, cancels below
  raised = jnp.where(present, q * jnp.exp(expo), 0.0)
  mass = jnp.sum(jnp.where(present, q, 0.0))
  new_present = raised * (mass / jnp.maximum(raised.sum(), 1e-30))
  return jnp.where(present, new_present, q)


@register("group_dro", init=group_dro_init)
def group_dro_loss(logits, batch, loss_state, cfg):
  """sum_g q_g * (mean weighted CE of group g), q updated first and treated as a constant."""
  q = loss_state["q"]
  per_sample = per_sample_ce(logits, batch["label"]) * batch["weight"]
  group_loss, counts = group_mean_losses(per_sample, batch["group"], q.shape[0])
  present = counts > 0
  q_new = update_weights(q, jax.lax.stop_gradient(group_loss), present, float(cfg.get("dro_eta", 0.01)),
                         loss_state["adj"])
  q_new = jax.lax.stop_gradient(q_new)
  loss = jnp.sum(q_new * group_loss)
  return loss, {**loss_state, "q": q_new}, {"dro_max_weight": jnp.max(q_new)}
