"""`spurjax bench ig`: Integrated Gradients images/s, spurjax (JAX) vs captum, same weights and batch.

Each image costs `steps` forward+backward passes of the classifier. On a GPU: ResNet-50,
batch 32 at 224 px, 50 steps, bf16 activations for JAX (captum runs fp32, on CUDA when
torch sees one). On a CPU: ResNet-18, batch 8 at 64 px, 8 steps, fp32, so the table
prints in a minute or two. Both sides evaluate `chunk` path points per image per pass.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from spurjax import models
from spurjax import sharding as shd
from spurjax.bench.common import add_speed_args, device_name, print_table, ratio_text, speed_setup, time_call
from spurjax.ddb.prune import attribute as A

NUM_CLASSES = 2


def _inputs(batch, size):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  b = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  return x, b, rng.integers(0, NUM_CLASSES, batch)


def jax_images_per_s(model_name, variables, batch, size, steps, chunk, method, dtype, iters, profile=False):
  f = A.classifier_fn(models.get_model(model_name, NUM_CLASSES, dtype), variables, dtype=dtype)
  x, b, t = _inputs(batch, size)
  mesh = shd.make_mesh()
  run = lambda: A.integrated_gradients(f, x, b, t, n_steps=steps, method=method, chunk=chunk, mesh=mesh)  # noqa: E731
  per_s = batch / time_call(run, warmup=1, iters=iters)
  if profile:  # several jitted calls per attribution: thunks are labelled by name only
    from spurjax.bench.profile import op_profile, print_profile
    print_profile(f"IG {model_name}, batch {batch}", *op_profile(run, iters=1))
  return per_s


def captum_images_per_s(model_name, variables, batch, size, steps, chunk, method, iters):
  import torch
  import torchvision
  from captum.attr import IntegratedGradients

  from spurjax.models import torchvision_io
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  net = getattr(torchvision.models, model_name)(num_classes=NUM_CLASSES)
  state = torchvision_io.variables_to_torchvision(variables, model_name)
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
  net = net.to(dev).eval()
  mean = torch.tensor(A.IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
  std = torch.tensor(A.IMAGENET_STD, device=dev).view(1, 3, 1, 1)
  ig = IntegratedGradients(lambda z: net((z - mean) / std))
  x, b, t = _inputs(batch, size)
  to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(dev)  # noqa: E731
  xt, bt, tt = to(x), to(b), torch.from_numpy(t).to(dev)

  def run():
    return ig.attribute(xt, bt, target=tt, n_steps=steps, method=method, internal_batch_size=batch * chunk)

  def sync(_):
    if dev == "cuda":
      torch.cuda.synchronize()

  return batch / time_call(run, warmup=1, iters=iters, sync=sync), dev


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="spurjax bench ig")
  p.add_argument("--model", default=None, choices=["resnet18", "resnet50"])
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--size", type=int, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--chunk", type=int, default=None, help="path points per pass (default: all on CPU, 10 on GPU)")
  p.add_argument("--method", default="gausslegendre", choices=list(A.METHODS))
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--no-torch", action="store_true")
  add_speed_args(p)
  a = p.parse_args(argv)
  with speed_setup(a):
    return _run(a)


def _run(a) -> int:
  gpu = jax.devices()[0].platform == "gpu"
  model_name = a.model or ("resnet50" if gpu else "resnet18")
  batch = shd.pad_to_multiple(a.batch or (32 if gpu else 8), jax.local_device_count())
  size = a.size or (224 if gpu else 64)
  steps = a.steps or (50 if gpu else 8)
  chunk = min(a.chunk or (10 if gpu else steps), steps)
  iters = a.iters or (5 if gpu else 2)
  dtype = jnp.bfloat16 if gpu else jnp.float32
  model = models.get_model(model_name, NUM_CLASSES)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False))(jax.random.PRNGKey(0))
  rows = []
  ours = jax_images_per_s(model_name, variables, batch, size, steps, chunk, a.method, dtype, iters, a.profile)
  rows.append([f"spurjax IG {model_name} ({jnp.dtype(dtype).name}, conv {a.conv})", ours, None])
  if not a.no_torch:
    try:
      theirs, dev = captum_images_per_s(model_name, variables, batch, size, steps, chunk, a.method, iters)
      rows.append([f"captum IG {model_name} (fp32, {dev})", theirs, "1.00x"])
      rows[0][2] = ratio_text(ours, theirs, name="captum")
    except ImportError:
      print("(torch / torchvision / captum not installed: reference row skipped)")
  print_table(f"Integrated Gradients ({a.method}, {steps} steps, {chunk} per pass), batch {batch}, {size}x{size}, "
              f"{device_name()}", ["implementation", "images/s", "ratio vs captum"], rows)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
