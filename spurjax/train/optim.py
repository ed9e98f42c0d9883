"""Optimisers and learning-rate schedules from config (optax)."""
from __future__ import annotations

import optax

from spurjax.errors import SpurjaxError


def make_schedule(cfg, total_steps: int, steps_per_epoch: int):
  lr = float(cfg.lr)
  warmup = int(round(float(cfg.warmup_epochs) * steps_per_epoch))
  name = cfg.schedule
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif name == "linear":
    main = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  else:
    raise SpurjaxError(f"config optim.schedule: unknown schedule '{name}' (constant, cosine, linear)")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (torch-style L2 weight decay), Adam (L2) or AdamW (decoupled), with a schedule."""
  sched = make_schedule(cfg, total_steps, steps_per_epoch)
  wd = float(cfg.weight_decay)
  name = cfg.name
  if name == "sgd":
    opt = optax.sgd(sched, momentum=float(cfg.momentum) or None, nesterov=bool(cfg.nesterov))
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == "adam":
    opt = optax.adam(sched, b1=float(cfg.b1), b2=float(cfg.b2))
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  if name == "adamw":
    return optax.adamw(sched, b1=float(cfg.b1), b2=float(cfg.b2), weight_decay=wd)
  raise SpurjaxError(f"config optim.name: unknown optimiser '{name}' (sgd, adam, adamw)")
