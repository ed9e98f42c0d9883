"""Sampling and inpainting: determinism, scan == Python loop, kept background, sharding, no retraces."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax import sharding
from spurjax.diffusion import guidance, pipeline_sampling, sampling, sampling_loop
from spurjax.diffusion import schedulers as S
from spurjax.errors import SpurjaxError

SCHED = S.make_schedule(dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                             set_alpha_to_one=False))
L, D = 5, 8  # context length and width


def _init_params(cin, cout=4, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"w": 0.5 * jax.random.normal(k[0], (cin, cout)), "wc": jax.random.normal(k[1], (D, cout)),
          "freq": jax.random.uniform(k[2], (cout,), minval=1e-3, maxval=1e-2)}


def tiny_denoise(params, x, t, ctx):
  """A small nonlinear stand-in network with spatial mixing and text/time conditioning."""
  temb = jnp.sin(t[:, None].astype(jnp.float32) * params["freq"])
  c = jnp.tanh(ctx.mean(axis=1) @ params["wc"])
  h = jnp.tanh(x @ params["w"] + temb[:, None, None, :] + c[:, None, None, :])
  return h + 0.3 * jnp.roll(h, 1, axis=1) + 0.3 * jnp.roll(h, -1, axis=2)


def pool_encode(params, img):
  """A local stand-in codec: 2x2 average pool then a fixed channel map (3 -> 4)."""
  b, h, w, c = img.shape
  pooled = img.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return jnp.concatenate([pooled, pooled.mean(-1, keepdims=True)], axis=-1)


def pool_decode(params, z):
  return jnp.repeat(jnp.repeat(z[..., :3], 2, axis=1), 2, axis=2)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  ctx = rng.standard_normal((4, L, D)).astype(np.float32)
  uncond = np.zeros((1, L, D), np.float32)
  images = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  masks = np.zeros((4, 8, 8), np.float32)
  masks[:, 2:6, 3:7] = 1.0
  masks[1] = 0.0
  masks[1, :3, :3] = 1.0
  return types.SimpleNamespace(ctx=ctx, uncond=uncond, images=images, masks=masks,
                               p4=_init_params(4), p7=_init_params(7, 3), p3=_init_params(3, 3))


@pytest.fixture(scope="module")
def mesh4():
  assert jax.device_count() == 4
  return sharding.make_mesh()


def _txt(data, **kw):
  args = dict(shape=(4, 8, 8, 4), context=data.ctx, uncond_context=data.uncond, guidance_scale=3.0,
              num_steps=4, rng=jax.random.key(0), params=data.p4)
  args.update(kw)
  return np.asarray(sampling.sample(tiny_denoise, SCHED, **args))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_sample_deterministic_and_loop_equals_scan(data, sampler):
  a = _txt(data, sampler=sampler)
  chex.assert_shape(a, (4, 8, 8, 4))
  assert np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1
  np.testing.assert_array_equal(a, _txt(data, sampler=sampler))
  assert np.abs(a - _txt(data, sampler=sampler, rng=jax.random.key(1))).max() > 1e-2
  loop = _txt(data, sampler=sampler, debug_python_loop=True)
  np.testing.assert_allclose(loop, a, atol=1e-5)
  # The guidance scale changes the result; the examples differ from each other.
  assert np.abs(a - _txt(data, sampler=sampler, guidance_scale=1.0)).max() > 1e-3
  assert np.abs(a[0] - a[1]).max() > 1e-2


def test_no_retrace_for_same_shapes(data):
  counted = chex.assert_max_traces(n=1)(lambda p, x, t, c: tiny_denoise(p, x, t, c))
  for seed, g in ((0, 2.0), (5, 4.0)):
    out = sampling.sample(counted, SCHED, shape=(4, 8, 8, 4), context=data.ctx, uncond_context=data.uncond,
                          guidance_scale=g, num_steps=3, rng=jax.random.key(seed), params=data.p4,
                          sampler="dpmpp_2m")
  assert out.shape == (4, 8, 8, 4)
  with pytest.raises(AssertionError):  # a new shape does trace again, so the counter is live
    sampling.sample(counted, SCHED, shape=(4, 6, 6, 4), context=data.ctx, num_steps=3, rng=jax.random.key(0),
                    params=data.p4)


def _inpaint(data, mode, denoise_fn=tiny_denoise, **kw):
  fn = sampling.inpaint_blended if mode == "blended" else sampling.inpaint_channels
  params = data.p3 if mode == "blended" else data.p7
  args = dict(images=data.images, masks=data.masks, context=data.ctx, uncond_context=data.uncond,
              guidance_scale=2.0, num_steps=4, rng=jax.random.key(3), params=params)
  args.update(kw)
  return np.asarray(fn(denoise_fn, SCHED, **args))


@pytest.mark.parametrize("mode", ["blended", "channels"])
def test_inpaint_pixel_space_keeps_unmasked_region(data, mode):
  out = _inpaint(data, mode, sampler="ddim" if mode == "blended" else "dpmpp_2m")
  chex.assert_shape(out, data.images.shape)
  keep = data.masks[..., None] < 0.5
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, data.images, 0), atol=1e-6)
  assert np.abs(np.where(keep, 0, out - data.images)).max() > 1e-2  # the masked region was repainted
  if mode == "blended":
    np.testing.assert_allclose(_inpaint(data, mode, debug_python_loop=True), out, atol=1e-5)


def test_channels_mode_feeds_mask_and_masked_image(data):
  seen = {}

  def spy(params, x, t, ctx):
    seen["x"] = x
    return tiny_denoise(params, x, t, ctx)

  sampling.inpaint_channels(spy, SCHED, images=data.images[:1], masks=data.masks[:1], context=data.ctx[:1],
                            num_steps=1, rng=jax.random.key(0), params=data.p7, debug_python_loop=True)
  x = np.asarray(seen["x"])
  chex.assert_shape(x, (1, 8, 8, 7))
  m = data.masks[:1, ..., None]
  np.testing.assert_array_equal(x[..., 3:4], m)
  np.testing.assert_allclose(x[..., 4:], (data.images[:1] * 2 - 1) * (m < 0.5), atol=1e-6)
  # Without keep_known the model alone decides the background.
  free = _inpaint(data, "channels", keep_known=False)
  assert np.abs(np.where(data.masks[..., None] < 0.5, free - data.images, 0)).max() > 1e-2


def test_first_step_follows_diffusers_strength_rule():
  assert sampling_loop.first_step(16, 1.0) == 0
  assert sampling_loop.first_step(16, 0.8) == 4      # int(12.8) = 12 steps run
  assert sampling_loop.first_step(25, 0.6) == 10
  for bad in (0.0, -0.5, 1.01, 0.05):
    with pytest.raises(SpurjaxError, match="strength="):
      sampling_loop.first_step(16, bad)


@pytest.mark.parametrize("mode,sampler", [("channels", "dpmpp_2m"), ("blended", "ddim")])
def test_strength_starts_from_the_noised_image_at_its_step(data, mode, sampler):
  calls = []

  def spy(params, x, t, ctx):
    calls.append((np.asarray(x), np.asarray(t)))
    return tiny_denoise(params, x, t, ctx)

  n, rng = 6, jax.random.key(3)
  full = _inpaint(data, mode, sampler=sampler, num_steps=n, rng=rng)
  np.testing.assert_array_equal(_inpaint(data, mode, sampler=sampler, num_steps=n, rng=rng, strength=1.0), full)
  out = _inpaint(data, mode, sampler=sampler, num_steps=n, rng=rng, strength=0.5, denoise_fn=spy,
                 debug_python_loop=True)
  ts = S.get_sampler(sampler).timesteps(SCHED, n)
  start = sampling_loop.first_step(len(ts), 0.5)
  assert start == 3 and len(calls) == len(ts) - start
  assert [int(t[0]) for _, t in calls] == [int(t) for t in ts[start:]]
  # The first model input is the whole image (masked region included) noised to step `start`.
  noise = np.asarray(sampling_loop.noise_program((8, 8, 3), None)(rng, jnp.arange(4, dtype=jnp.int32)))
  want = np.asarray(S.add_noise(SCHED, jnp.asarray(data.images * 2 - 1), jnp.asarray(noise), int(ts[start])))
  np.testing.assert_allclose(calls[0][0][::2, ..., :3], want, atol=1e-5)  # rows interleave uncond / cond
  keep = data.masks[..., None] < 0.5
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, data.images, 0), atol=1e-6)
  # Starting later leaves the repainted region closer to the image than starting from noise.
  inside = ~keep[..., 0]
  assert np.abs(out - data.images)[inside].mean() < np.abs(full - data.images)[inside].mean()
  np.testing.assert_allclose(_inpaint(data, mode, sampler=sampler, num_steps=n, rng=rng, strength=0.5), out,
                             atol=1e-5)  # the compiled scan agrees with the Python loop


def test_guidance_interval_weights_and_errors():
  ts = np.array([999, 750, 500, 250, 0])
  np.testing.assert_array_equal(guidance.guidance_weights(ts, 3.0), [3.0] * 5)
  np.testing.assert_array_equal(guidance.guidance_weights(ts, 3.0, ()), [3.0] * 5)
  np.testing.assert_array_equal(guidance.guidance_weights(ts, 3.0, (250, 750)), [1.0, 3.0, 3.0, 3.0, 1.0])
  for bad in ((5, 1), (-1, 3), (1,), "ab", (1, 2, 3)):
    with pytest.raises(SpurjaxError, match="guidance_interval="):
      guidance.check_guidance_interval(bad)


@pytest.mark.parametrize("mode,sampler", [("channels", "dpmpp_2m"), ("blended", "ddim")])
def test_guidance_interval_guides_only_its_steps(data, mode, sampler):
  """Outside the interval each step takes the conditional prediction alone (as with guidance 1)."""
  n = 5
  ts = S.get_sampler(sampler).timesteps(SCHED, n)
  plain = _inpaint(data, mode, sampler=sampler, num_steps=n)
  np.testing.assert_array_equal(
      _inpaint(data, mode, sampler=sampler, num_steps=n, guidance_interval=(0, 1000)), plain)
  # An interval holding no step gives exactly what guidance 1 gives (the uncond rows are still computed).
  none = _inpaint(data, mode, sampler=sampler, num_steps=n, guidance_interval=(2000, 3000))
  np.testing.assert_allclose(none, _inpaint(data, mode, sampler=sampler, num_steps=n, guidance_scale=1.0),
                             atol=1e-6)
  # Guidance only at the noisiest step: not the same as either, and the Python loop agrees with the scan.
  part = _inpaint(data, mode, sampler=sampler, num_steps=n, guidance_interval=(int(ts[0]), int(ts[0])))
  assert np.abs(part - plain).max() > 1e-4 and np.abs(part - none).max() > 1e-4
  loop = _inpaint(data, mode, sampler=sampler, num_steps=n, guidance_interval=(int(ts[0]), int(ts[0])),
                  debug_python_loop=True)
  np.testing.assert_allclose(loop, part, atol=1e-5)


@pytest.mark.parametrize("mode", ["blended", "channels"])
def test_inpaint_latent_codec_keeps_known_cells(data, mode):
  params = _init_params(4) if mode == "blended" else _init_params(9)
  out = _inpaint(data, mode, params=params, encode_fn=pool_encode, decode_fn=pool_decode)
  roundtrip = (np.asarray(pool_decode(None, pool_encode(None, data.images * 2 - 1))) + 1) / 2
  # A 2x2 latent cell is repainted if any of its pixels is masked ("max" pooling).
  cell = data.masks.reshape(4, 4, 2, 4, 2).max(axis=(2, 4))
  known = np.repeat(np.repeat(cell, 2, 1), 2, 2)[..., None] < 0.5
  np.testing.assert_allclose(np.where(known, out, 0), np.where(known, roundtrip, 0), atol=1e-6)
  assert np.abs(np.where(known, 0, out - roundtrip)).max() > 1e-2


@pytest.mark.slow
def test_sharded_equals_single_device_and_batch_independent(data, mesh4):
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  kw = dict(sampler="ddim", eta=0.3)  # eta > 0: per-example step noise is sharded too
  one = _txt(data, mesh=mesh1, **kw)
  out4 = sampling.sample(tiny_denoise, SCHED, shape=(4, 8, 8, 4), context=data.ctx, uncond_context=data.uncond,
                         guidance_scale=3.0, num_steps=4, rng=jax.random.key(0), params=data.p4, mesh=mesh4, **kw)
  assert out4.sharding.is_equivalent_to(sharding.batch_sharding(mesh4), 4)
  np.testing.assert_allclose(np.asarray(out4), one, atol=1e-5)
  plain = _txt(data)
  assert np.abs(one - plain).max() > 1e-3  # eta > 0 adds noise
  # Example b's result depends only on (rng, b), not on the rest of the batch.
  np.testing.assert_allclose(_txt(data, shape=(2, 8, 8, 4), context=data.ctx[:2]), plain[:2], atol=1e-5)
  # Batch 3 does not divide 4 devices: it is padded, and the rows match an unsharded batch of 4.
  sub = dict(images=data.images[:3], masks=data.masks[:3], context=data.ctx[:3])
  four = _inpaint(data, "channels", mesh=mesh4, sampler="dpmpp_2m", **sub)
  chex.assert_shape(four, (3, 8, 8, 3))
  np.testing.assert_allclose(four, _inpaint(data, "channels", sampler="dpmpp_2m")[:3], atol=1e-5)


@pytest.mark.parametrize("change,match", [
    (dict(images=np.full((4, 8, 8, 3), 2.0, np.float32)), "un-normalised"),
    (dict(masks=np.zeros((4, 6, 6), np.float32)), "masks"),
    (dict(context=np.zeros((3, L, D), np.float32)), "context"),
    (dict(sampler="heun"), "sampler"),
    (dict(num_steps=0), "num_steps"),
    (dict(encode_fn=pool_encode), "encode_fn"),
])
def test_bad_inputs_raise(data, change, match):
  with pytest.raises(SpurjaxError, match=match):
    _inpaint(data, "blended", **change)


# ---------------------------------------------------------------- with the real Flax modules

UNET = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, cross_attention_dim=D,
            attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), out_channels=4, sample_size=8, in_channels=9)
VAE = dict(block_out_channels=[8, 8], down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, latent_channels=4, scaling_factor=0.5)


def _random_like(shapes, seed):
  """Random params from a shape tree without compiling the model's init."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    base = 1.0 if name == "scale" else 0.0
    return (base + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def pipeline():
  unet_lib = pytest.importorskip("spurjax.diffusion.unet")
  vae_lib = pytest.importorskip("spurjax.diffusion.vae")
  loading = pytest.importorskip("spurjax.diffusion.loading")
  return loading.Pipeline(
      unet=unet_lib.UNet2DConditionModel(UNET),
      unet_params=_random_like(unet_lib.unet_param_shapes(UNET, sample_size=8), 1),
      vae=vae_lib.AutoencoderKL(VAE), vae_params=_random_like(vae_lib.vae_param_shapes(VAE), 2))


@pytest.mark.slow
def test_real_unet_and_vae_inpaint_channels(data, pipeline, mesh4):
  fns = pipeline_sampling.pipeline_fns(pipeline)
  assert (fns.in_channels, fns.latent_channels, fns.downscale) == (9, 4, 2)
  assert pipeline_sampling.pipeline_fns(pipeline).denoise is fns.denoise  # same callables -> compiled program reused
  images = np.repeat(np.repeat(data.images[:2], 2, 1), 2, 2)  # (2, 16, 16, 3)
  masks = np.zeros((2, 16, 16), np.float32)
  masks[:, 4:12, 4:12] = 1.0
  out = np.asarray(sampling.inpaint_channels(
      fns.denoise, SCHED, images=images, masks=masks, context=data.ctx[:2], uncond_context=data.uncond,
      guidance_scale=2.0, num_steps=2, rng=jax.random.key(0), params=fns.params, encode_fn=fns.encode,
      decode_fn=fns.decode, mesh=mesh4))
  chex.assert_shape(out, (2, 16, 16, 3))
  assert np.all(np.isfinite(out))
  roundtrip = jax.jit(lambda p, x: fns.decode(p, fns.encode(p, x * 2 - 1)))(fns.params, images)
  roundtrip = np.clip((np.asarray(roundtrip) + 1) / 2, 0, 1)
  keep = np.broadcast_to(masks[..., None] < 0.5, out.shape)
  err = np.abs(out - images)[keep].mean()
  rt_err = np.abs(roundtrip - images)[keep].mean()
  assert err <= rt_err + 0.05, (err, rt_err)
  assert np.abs(out - roundtrip)[~keep].max() > 1e-3  # the masked region was generated


def test_encode_prompts_with_tiny_clip(tmp_path):
  clip_lib = pytest.importorskip("spurjax.diffusion.clip_text")
  tok_lib = pytest.importorskip("spurjax.diffusion.tokenizer")
  pytest.importorskip("transformers")
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(tmp_path / "tok", vocab_size=600))
  config = dict(vocab_size=600, hidden_size=D, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
  pipe = types.SimpleNamespace(tokenizer=tok, text_encoder=clip_lib.CLIPTextModel(config),
                               text_params=_random_like(clip_lib.clip_param_shapes(config), 3))
  ctx = np.asarray(pipeline_sampling.encode_prompts(pipe, ["a photo of a bird", "a dog"]))
  chex.assert_shape(ctx, (2, 77, D))
  empty = np.asarray(pipeline_sampling.empty_context(pipe))
  chex.assert_shape(empty, (1, 77, D))
  ids = tok_lib.encode(tok, ["a dog"])
  want = pipe.text_encoder.apply({"params": pipe.text_params}, jnp.asarray(ids))
  np.testing.assert_allclose(ctx[1:], np.asarray(want), atol=1e-5)
  assert np.abs(ctx[0] - ctx[1]).max() > 1e-3 and np.abs(ctx[1] - empty[0]).max() > 1e-3
  with pytest.raises(SpurjaxError, match="prompts"):
    pipeline_sampling.encode_prompts(pipe, [])
