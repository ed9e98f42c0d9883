"""`spurjax bench unet`: time one UNet call at the SD-2-inpainting shape, against diffusers.

On a GPU: batch 16 of 64x64 latents, 77 text tokens, bf16 activations; the diffusers
PyTorch UNet runs in fp16, eager and torch.compile. On a CPU the shape shrinks
(batch 2, 32x32 latents; `--small` also shrinks the widths) and both sides run fp32.
Weights are random (the same weights on both sides). Prints one table:
implementation, ms/call, TFLOP/s and speed-up over the diffusers eager row.
"""
from __future__ import annotations

import argparse
import platform as platform_lib
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from spurjax.diffusion import unet as unet_lib
from spurjax.diffusion.unet_config import parse_config
from spurjax.diffusion.attention import fused_attention_calls, select_implementation
from spurjax.bench.common import add_speed_args, speed_setup

SD2_INPAINT_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
_DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}


def bench_config(small: bool = False) -> dict:
  """The SD-2-inpainting UNet config; `small` divides the widths by 10 (same depth and head dim 32)."""
  config = dict(SD2_INPAINT_UNET)
  if small:
    config.update(block_out_channels=[32, 64, 128, 128], attention_head_dim=[1, 2, 4, 4])
  return config


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in lhs_contract]))
    elif name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod(kernel)) // kernel[out_dim]
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        total += _jaxpr_flops(sub)
  return total


def matmul_flops(fn: Callable, *args) -> int:
  """FLOPs of every matmul and convolution in `fn(*args)` (from its jaxpr, no compile)."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(compiled) -> float | None:
  """FLOPs from XLA's cost analysis of a compiled function, or None if it has none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def time_call(fn: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> tuple[float, Any]:
  """Median wall time in ms of `sync(fn())` after `warmup` untimed calls, and the last output."""
  for _ in range(warmup):
    sync(fn())
  times, out = [], None
  for _ in range(max(iters, 1)):
    start = time.perf_counter()
    out = fn()
    sync(out)
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), out


def _device_name() -> str:
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    cpu = platform_lib.processor() or platform_lib.machine()
    try:
      with open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    import os
    return f"cpu ({cpu}, {os.cpu_count()} cores)"
  return f"{dev.platform} ({dev.device_kind})"


def _torch_unet(config: dict, state: dict[str, np.ndarray]):
  """diffusers' UNet holding `state` (torch tensors share the numpy buffers), or None without torch."""
  try:
    import torch
    from diffusers import UNet2DConditionModel
  except ImportError:
    return None, None
  with torch.device("meta"):
    model = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
  tensors = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in state.items()}
  model.load_state_dict(tensors, strict=True, assign=True)
  return model.eval(), torch


def _bench_torch(model, torch, inputs, device: str, dtype, compile_: bool, warmup: int, iters: int):
  x, t, ctx = inputs
  sample = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device, dtype)
  timesteps = torch.from_numpy(t).to(device)
  context = torch.from_numpy(ctx).to(device, dtype)
  fn = torch.compile(model) if compile_ else model
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)

  def call():
    with torch.inference_mode():
      return fn(sample, timesteps, context, return_dict=False)[0]

  ms, out = time_call(call, sync, warmup + (2 if compile_ else 0), iters)
  return ms, out.float().cpu().numpy().transpose(0, 2, 3, 1)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="spurjax bench unet", description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, help="latents per call (default 16 on GPU, 2 on CPU)")
  p.add_argument("--size", type=int, help="latent height = width (default 64 on GPU, 32 on CPU)")
  p.add_argument("--text-len", type=int, default=77)
  p.add_argument("--small", action="store_true", help="widths / 10 (32/64/128/128)")
  p.add_argument("--dtype", choices=sorted(_DTYPES), help="JAX activation dtype (default bf16 on GPU, fp32 on CPU)")
  p.add_argument("--compile", action="store_true", help="also torch.compile on CPU (always done on CUDA)")
  p.add_argument("--no-torch", action="store_true", help="skip the diffusers rows")
  p.add_argument("--warmup", type=int, help="untimed calls (default 3 on GPU, 1 on CPU)")
  p.add_argument("--iters", type=int, help="timed calls (default 20 on GPU, 2 on CPU)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--prior-train", action="store_true",
                 help="time a training step of the shipped prior's UNet (batch 64) against diffusers + torch AdamW")
  add_speed_args(p)
  return p.parse_args(argv)


def _prior_train(args) -> int:
  """One AdamW step on the v-prediction MSE of the shipped prior's UNet, spurjax vs diffusers, same weights."""
  import optax

  from spurjax.bench.common import ratio_text
  from pathlib import Path

  from spurjax.diffusion import loading
  from spurjax.diffusion.builtin import builtin_prior_path
  folder = Path(builtin_prior_path()) / "unet"
  config = loading.read_json(folder / "config.json")
  model, params = loading.load_unet(folder)
  spec = parse_config(config)
  batch, size = args.batch or 64, args.size or int(config["sample_size"])
  rs = np.random.RandomState(args.seed)
  x = rs.randn(batch, size, size, spec.in_channels).astype(np.float32)
  target = rs.randn(batch, size, size, spec.out_channels).astype(np.float32)
  t = rs.randint(0, 1000, size=(batch,)).astype(np.int32)
  ctx = rs.randn(batch, args.text_len, spec.cross_attention_dim[0]).astype(np.float32)
  tx = optax.adamw(1e-4)

  @jax.jit
  def step(params, opt_state, x, t, ctx, target):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply({"params": p}, x, t, ctx) - target) ** 2))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  holder = {"p": params, "o": tx.init(params)}
  jx, jt, jc, jy = map(jnp.asarray, (x, t, ctx, target))

  def run():
    holder["p"], holder["o"], loss = step(holder["p"], holder["o"], jx, jt, jc, jy)
    return loss

  warmup, iters = args.warmup if args.warmup is not None else 2, args.iters or 5
  ours, _ = time_call(run, jax.block_until_ready, warmup, iters)
  if args.profile:
    from spurjax.bench.profile import profile_jitted
    profile_jitted(f"prior train step, batch {batch}", step, (holder["p"], holder["o"], jx, jt, jc, jy), run)
  print(f"device: {_device_name()}")
  print(f"shipped prior UNet ({unet_lib.count_params(params) / 1e6:.2f}M params), train step, batch {batch}, "
        f"{size}x{size}x{spec.in_channels}, text {ctx.shape[1]} tokens, fp32, AdamW")
  print(f"{'implementation':<44}{'ms/step':>10}{'images/s':>10}  ratio")
  print(f"{'spurjax jit (conv ' + args.conv + ')':<44}{ours:>10.1f}{batch / ours * 1e3:>10.1f}")
  if args.no_torch:
    return 0
  state = unet_lib.unet_to_diffusers(params, config)
  tmodel, torch = _torch_unet(config, {k: np.array(v) for k, v in state.items()})
  if tmodel is None:
    print("diffusers / torch not importable: PyTorch row skipped")
    return 0
  tmodel.train()
  opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4)
  tt = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
  sample, ttarget = tt(x.transpose(0, 3, 1, 2)), tt(target.transpose(0, 3, 1, 2))
  steps, context = tt(t.astype(np.int64)), tt(ctx)

  def trun():
    opt.zero_grad(set_to_none=True)
    loss = torch.mean((tmodel(sample, steps, context, return_dict=False)[0] - ttarget) ** 2)
    loss.backward()
    opt.step()
    return loss

  theirs, _ = time_call(trun, lambda _: None, warmup, iters)
  print(f"{'diffusers + torch AdamW (cpu, ' + str(torch.get_num_threads()) + ' threads)':<44}{theirs:>10.1f}"
        f"{batch / theirs * 1e3:>10.1f}  1.00x")
  print(f"spurjax vs diffusers: {ratio_text(theirs, ours, name='diffusers')}")
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  with speed_setup(args):  # --torch-threads (default: the machine's cores) and --conv
    if args.prior_train:
      return _prior_train(args)
    return _main(args)


def _main(args) -> int:
  on_gpu = jax.default_backend() == "gpu"
  batch = args.batch or (16 if on_gpu else 2)
  size = args.size or (64 if on_gpu else 32)
  dtype = _DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
  warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
  iters = args.iters or (20 if on_gpu else 2)
  config = bench_config(args.small)
  spec = parse_config(config)

  rs = np.random.RandomState(args.seed)
  x = rs.randn(batch, size, size, spec.in_channels).astype(np.float32)
  t = rs.randint(0, 1000, size=(batch,)).astype(np.int64)
  ctx = rs.randn(batch, args.text_len, spec.cross_attention_dim[0]).astype(np.float32)
  params = unet_lib.init_unet_params(config, jax.random.key(args.seed))
  print(f"device: {_device_name()}")
  print(f"shape: sample {x.shape} NHWC, timesteps ({batch},), text {ctx.shape}; "
        f"widths {list(spec.block_out_channels)}, heads {list(spec.heads)}, "
        f"{unet_lib.count_params(params) / 1e6:.0f}M params")

  rows, outputs = [], {}
  jx, jt, jctx = jnp.asarray(x), jnp.asarray(t.astype(np.int32)), jnp.asarray(ctx)
  impls = [None, "xla"] if on_gpu and dtype != jnp.float32 else [None]
  dtype_name = np.dtype(dtype).name.replace("bfloat16", "bf16").replace("float", "fp")
  flops, flops_src = None, ""
  for impl in impls:
    model = unet_lib.UNet2DConditionModel(config, dtype=dtype, attention_implementation=impl)
    start = time.perf_counter()
    compiled = jax.jit(model.apply).lower({"params": params}, jx, jt, jctx).compile()
    compile_s = time.perf_counter() - start
    if on_gpu:
      print(f"compiled UNet ({impl or 'picked'} attention, activations {dtype_name}): "
            f"{fused_attention_calls(compiled.as_text())} cuDNN fused attention calls")
    if flops is None:
      counted = matmul_flops(model.apply, {"params": params}, jx, jt, jctx)
      from_xla = xla_flops(compiled)
      # A fused-attention custom call is invisible to XLA's count: keep the larger.
      flops, flops_src = ((from_xla, "XLA cost analysis") if from_xla and from_xla >= counted
                          else (counted, "matmul+conv count"))
      flops_src += (f"; XLA cost analysis {from_xla / 1e9:.1f}" if from_xla else "; no XLA cost analysis")
      flops_src += f", matmul+conv count {counted / 1e9:.1f}"
    fn = lambda c=compiled: c({"params": params}, jx, jt, jctx)
    ms, out = time_call(fn, jax.block_until_ready, warmup, iters)
    if args.profile:
      from spurjax.bench.profile import op_profile, print_profile
      print_profile(f"UNet call, batch {batch}", *op_profile(fn, compiled.as_text()))
    picked = impl or "/".join(sorted({select_implementation(dtype, c // h) or "default"
                                       for c, h in zip(spec.block_out_channels, spec.heads)}))
    attn = f"{picked} attention"
    label = f"spurjax jit {dtype_name} ({attn})"
    rows.append((label, ms, f"compile {compile_s:.0f}s"))
    outputs[label] = np.asarray(out)

  eager_ms = None
  if not args.no_torch:
    state = unet_lib.unet_to_diffusers(params, config)
    model, torch = _torch_unet(config, state)
    del state
    if model is None:
      print("diffusers / torch not importable: PyTorch rows skipped")
    else:
      cuda = torch.cuda.is_available()
      device, tdtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
      if cuda:
        model = model.to(device, tdtype)
      tname = "fp16" if cuda else "fp32"
      eager_ms, out = _bench_torch(model, torch, (x, t, ctx), device, tdtype, False, warmup, iters)
      threads = "" if cuda else f"{torch.get_num_threads()} threads"
      rows.append((f"diffusers eager {tname} ({device})", eager_ms, threads))
      outputs["diffusers"] = out
      if cuda or args.compile:
        label = f"diffusers torch.compile {tname} ({device})"
        try:
          ms, _ = _bench_torch(model, torch, (x, t, ctx), device, tdtype, True, warmup, iters)
          rows.append((label, ms, threads))
        except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for inductor
          print(f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

  print(f"FLOPs/call: {flops / 1e9:.1f} GFLOP ({flops_src})")
  print(f"{'implementation':<44}{'ms/call':>10}{'TFLOP/s':>10}{'vs eager':>10}  note")
  for label, ms, note in rows:
    ratio = f"{eager_ms / ms:.2f}x" if eager_ms else "-"
    print(f"{label:<44}{ms:>10.1f}{flops / ms / 1e9:>10.2f}{ratio:>10}  {note}")
  if "diffusers" in outputs:
    ref = outputs["diffusers"]
    for label, out in outputs.items():
      if label != "diffusers":
        rel = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"max |{label} - diffusers| / max|diffusers| = {rel:.2e}")
  print("vs eager = diffusers eager ms / row ms (higher is faster)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
