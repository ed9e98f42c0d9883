"""GroupDRO (Sagawa et al., 2020): online group-weighted loss, registered as loss "group_dro".

Per step: mean loss of each group present in the batch, exponentiated-gradient update of
the group weights q (kept in the loss state) with step size `dro_eta` and the generalisation
adjustment `dro_adj / sqrt(n_g)`, then loss = sum_g q_g * loss_g. Groups absent from a batch
keep their weight; the mass of the present groups is renormalised among themselves.

As in the published runs (Sagawa et al.'s `--reweight_groups`), the runner trains GroupDRO on
group-balanced batches: every group upsampled to the largest (`method.dro_balanced`, default on).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.errors import SpurjaxError
from spurjax.train import losses


def adjustment(adj: float, group_counts, num_groups: int) -> np.ndarray:
  """C / sqrt(n_g) per group (zeros when C is 0)."""
  if not adj:
    return np.zeros(num_groups, np.float32)
  if group_counts is None or len(group_counts) != num_groups:
    raise SpurjaxError(f"config method.dro_adj={adj} needs the {num_groups} training group counts "
                       "(method.group_counts)")
  n = np.maximum(np.asarray(group_counts, np.float64), 1.0)
  return (float(adj) / np.sqrt(n)).astype(np.float32)


def init_state(cfg, num_groups: int) -> dict:
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


@losses.register("group_dro", init=init_state)
def group_dro_loss(logits, batch, loss_state, cfg):
  """sum_g q_g * (mean weighted CE of group g), q updated first and treated as a constant."""
  q = loss_state["q"]
  per_sample = losses.per_sample_ce(logits, batch["label"]) * batch["weight"]
  group_loss, counts = group_mean_losses(per_sample, batch["group"], q.shape[0])
  present = counts > 0
  q_new = update_weights(q, jax.lax.stop_gradient(group_loss), present, float(cfg.get("dro_eta", 0.01)),
                         loss_state["adj"])
  q_new = jax.lax.stop_gradient(q_new)
  loss = jnp.sum(q_new * group_loss)
  return loss, {**loss_state, "q": q_new}, {"dro_max_weight": jnp.max(q_new)}
