"""`spurjax bench erm`: training images/s of the Flax ResNet-50 vs torchvision's, same batch, same run.

On a GPU: batch 256 at 224 px, bf16 activations (torchvision: bf16 autocast, channels-last).
On a CPU: a small shape (batch 8, 64 px, fp32) so the table prints in a minute or two.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import models
from spurjax import sharding as shd
from spurjax.bench.common import add_speed_args, device_name, print_table, ratio_text, speed_setup, time_call
from spurjax.config_base import base_config
from spurjax.train import losses
from spurjax.train.optim import make_optimizer
from spurjax.train.state import TrainState
from spurjax.train.step import make_train_step


def flax_images_per_s(model_name, batch, size, dtype, iters, profile=False):
  cfg = base_config()
  cfg.optim.lr = 0.1
  model = models.get_model(model_name, 1000, dtype)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False))(jax.random.PRNGKey(0))
  mesh = shd.make_mesh()
  state = shd.replicate(TrainState.create(apply_fn=model.apply, variables=variables,
                                          tx=make_optimizer(cfg.optim, 100, 10)), mesh)
  step = make_train_step(losses.get("ce")[0], cfg.method, mesh, dtype=dtype)
  rng = np.random.default_rng(0)
  b = shd.shard_batch({"image": rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8),
                       "label": rng.integers(0, 1000, batch).astype(np.int32),
                       "group": np.zeros(batch, np.int32), "weight": np.ones(batch, np.float32)}, mesh)
  key = jax.random.PRNGKey(1)
  holder = {"s": state}

  def run():
    holder["s"], m = step(holder["s"], b, key)
    return m["loss"]

  per_s = batch / time_call(run, warmup=2, iters=iters)
  if profile:
    from spurjax.bench.profile import profile_jitted
    profile_jitted(f"{model_name} train step, batch {batch}, {size} px", step, (holder["s"], b, key), run)
  return per_s


def torch_small_cnn(widths, num_classes):
  """The PyTorch twin of `spurjax.models.SmallCNN`: conv3x3 (no bias) + BN + relu stages, GAP, fc."""
  import torch
  layers, cin = [], 3
  for i, w in enumerate(widths):
    layers += [torch.nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
               torch.nn.BatchNorm2d(w), torch.nn.ReLU(inplace=True)]
    cin = w
  layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, num_classes)]
  return torch.nn.Sequential(*layers)


CNN_WIDTHS = {"cnn": (32, 64, 128, 256), "cnn16": (16, 32, 64, 128), "cnn3": (32, 64, 128)}


def torch_images_per_s(model_name, batch, size, bf16, iters):
  import torch
  import torchvision
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if model_name in CNN_WIDTHS:
    net = torch_small_cnn(CNN_WIDTHS[model_name], 1000).to(dev)
  else:
    net = getattr(torchvision.models, model_name)(num_classes=1000).to(dev)
  if dev == "cuda":
    net = net.to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch, 3, size, size, device=dev)
  if dev == "cuda":
    x = x.to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (batch,), device=dev)
  loss_fn = torch.nn.CrossEntropyLoss()

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss

  def sync(_):
    if dev == "cuda":
      torch.cuda.synchronize()

  return batch / time_call(run, warmup=2, iters=iters, sync=sync)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="spurjax bench erm")
  p.add_argument("--model", default="resnet50", choices=["resnet18", "resnet50", *CNN_WIDTHS],
                 help="cnn3 is the built-in benchmark's classifier (torch twin built here)")
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--no-torch", action="store_true")
  add_speed_args(p)
  a = p.parse_args(argv)
  with speed_setup(a):
    return _run(a)


def _run(a) -> int:
  gpu = jax.devices()[0].platform == "gpu"
  batch = a.batch or (256 if gpu else 8)
  size = a.size or (224 if gpu else 64)
  iters = a.iters or (20 if gpu else 5)
  dtype = jnp.bfloat16 if gpu else jnp.float32
  batch = shd.pad_to_multiple(batch, jax.device_count())
  rows = []
  ours = flax_images_per_s(a.model, batch, size, dtype, iters, a.profile)
  rows.append([f"spurjax Flax {a.model} ({jnp.dtype(dtype).name}, conv {a.conv})", ours, None])
  if not a.no_torch:
    try:
      theirs = torch_images_per_s(a.model, batch, size, gpu, iters)
      rows.append([f"torchvision {a.model} ({'bf16 autocast, channels-last' if gpu else 'fp32'})", theirs, None])
      rows[0][2] = ratio_text(ours, theirs, name="torchvision")
      rows[1][2] = "1.00x"
    except ImportError:
      print("(torch / torchvision not installed: reference row skipped)")
  print_table(f"train step, batch {batch}, {size}x{size}, {device_name()}", ["implementation", "images/s",
                                                                              "ratio vs torchvision"], rows)
  return 0
