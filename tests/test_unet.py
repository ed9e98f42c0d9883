"""Flax SD UNet: parity with diffusers on random weights, conversion, config checks, attention."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax.diffusion import attention as attn_lib
from spurjax.diffusion import unet as unet_lib
from spurjax.diffusion.unet_config import parse_config
from spurjax.errors import SpurjaxError

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
            attention_head_dim=(2, 4), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), out_channels=4, sample_size=16)


def _randomise(model, seed=0):
  """Fills every torch param with random values (diffusers zero-inits some)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))


_TEXT_TIME = dict(addition_embed_type="text", addition_embed_type_num_heads=4)


@pytest.fixture(scope="module", params=[(False, 4, 16, True, {}), (True, 9, 15, False, {}),
                                        (True, 9, 16, False, _TEXT_TIME)],
                ids=["conv-proj-in4-capture", "linear-proj-in9-odd", "text-time-embedding"])
def reference(request):
  """A randomised diffusers UNet, its state dict and config, and one reference output."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  linear, in_ch, size, capture, extra = request.param
  tm = diffusers.UNet2DConditionModel(**TINY, **extra, in_channels=in_ch, use_linear_projection=linear).eval()
  _randomise(tm)
  sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
  rs = np.random.RandomState(1)
  x = rs.randn(2, in_ch, size, size).astype(np.float32)
  ctx = rs.randn(2, 5, 16).astype(np.float32)
  t = np.array([10, 731], np.int64)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
  return dict(sd=sd, config=dict(tm.config), x=x.transpose(0, 2, 3, 1), ctx=ctx, t=t,
              ref=ref.transpose(0, 2, 3, 1), capture=capture)


@pytest.fixture(scope="module")
def flax_run(reference):
  """The Flax UNet on the reference weights and inputs (capturing cross-attention on one config)."""
  params = unet_lib.unet_from_diffusers(reference["sd"], reference["config"])
  model = unet_lib.UNet2DConditionModel(reference["config"], capture_cross_attention=reference["capture"])
  apply = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c, mutable=["intermediates"]))
  out, state = apply(params, reference["x"], reference["t"], reference["ctx"])
  return params, np.asarray(out), state.get("intermediates", {})


def _rel_err(out, ref):
  return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.slow
def test_parity_with_diffusers(reference, flax_run):
  _, out, _ = flax_run
  chex.assert_shape(out, reference["x"].shape[:3] + (4,))
  assert out.dtype == np.float32
  rel = _rel_err(out, reference["ref"])
  assert rel < 1e-4, rel


@pytest.mark.slow
def test_capture_cross_attention(reference, flax_run):
  _, _, inter = flax_run
  if not reference["capture"]:
    assert not jax.tree.leaves(inter)
    return
  leaves = jax.tree_util.tree_flatten_with_path(inter)[0]
  probs = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
  # Down block 0 (16x16 tokens, 2 heads), mid block (8x8, 4 heads), up block 1 x2 (16x16, 2 heads).
  assert len(probs) == 4, list(probs)
  assert all("attn2" in k for k in probs)
  assert sorted(v.shape for v in probs.values()) == [(2, 2, 256, 5)] * 3 + [(2, 4, 64, 5)]
  for v in probs.values():
    np.testing.assert_allclose(v.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_bf16_activations_track_fp32(reference, flax_run):
  if reference["capture"]:
    pytest.skip("bf16 is checked on the other config only (saves a compile)")
  params = flax_run[0]
  model = unet_lib.UNet2DConditionModel(reference["config"], dtype=jnp.bfloat16)
  out = jax.jit(model.apply)({"params": params}, reference["x"], reference["t"], reference["ctx"])
  assert out.dtype == jnp.float32
  rel = _rel_err(np.asarray(out), reference["ref"])
  assert rel < 5e-2, rel


@pytest.mark.slow
def test_round_trip_is_exact(reference, flax_run):
  sd = reference["sd"]
  back = unet_lib.unet_to_diffusers(flax_run[0], reference["config"])
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


@pytest.mark.slow
def test_missing_and_misshaped_tensor_named(reference):
  sd = dict(reference["sd"])
  key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
  del sd[key]
  with pytest.raises(SpurjaxError, match=key):
    unet_lib.unet_from_diffusers(sd, reference["config"])
  sd = dict(reference["sd"])
  key = "mid_block.resnets.1.conv2.weight"
  sd[key] = sd[key][:, :-1]
  with pytest.raises(SpurjaxError, match=key):
    unet_lib.unet_from_diffusers(sd, reference["config"], what="unet/model.safetensors")


@pytest.mark.slow
def test_init_params_match_diffusers_layout(reference, flax_run):
  params = unet_lib.init_unet_params(reference["config"], jax.random.key(0))
  chex.assert_trees_all_equal_shapes_and_dtypes(params, flax_run[0])
  again = unet_lib.init_unet_params(reference["config"], jax.random.key(0))
  chex.assert_trees_all_equal(params, again)
  attn1 = params["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]
  assert "bias" not in attn1["to_q"] and "bias" in attn1["to_out_0"]
  kernel = np.asarray(params["mid_block"]["resnets_0"]["conv1"]["kernel"])  # 3x3x64x64
  assert abs(kernel.std() * np.sqrt(9 * 64) - 1) < 0.05
  np.testing.assert_array_equal(params["conv_norm_out"]["scale"], 1.0)


@pytest.mark.parametrize("key,value", [
    ("class_embed_type", "timestep"),
    ("addition_embed_type", "text_time"),
    ("time_cond_proj_dim", 256),
    ("encoder_hid_dim", 768),
    ("resnet_time_scale_shift", "scale_shift"),
    ("only_cross_attention", True),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ("act_fn", "gelu"),
    ("some_future_option", 3),
    ("cross_attention_dim", [16, 32]),
    ("transformer_layers_per_block", [[1, 2], [1, 2]]),
    ("in_channels", "9"),
])
def test_unsupported_config_value_names_key(key, value):
  config = dict(TINY, in_channels=4)
  config[key] = value
  with pytest.raises(SpurjaxError, match=key):
    unet_lib.UNet2DConditionModel(config)


def test_unknown_block_type_and_harmless_keys():
  config = dict(TINY, in_channels=4, down_block_types=("AttnDownBlock2D", "DownBlock2D"))
  with pytest.raises(SpurjaxError, match="down_block_types.*AttnDownBlock2D"):
    parse_config(config)
  spec = parse_config(dict(TINY, in_channels=9, _class_name="UNet2DConditionModel",
                           _diffusers_version="0.8.0", sample_size=64, upcast_attention=True,
                           num_attention_heads=None, dual_cross_attention=False))
  assert spec.heads == (2, 4) and spec.in_channels == 9


def test_sd2_heads_from_attention_head_dim():
  config = dict(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=1024)
  spec = parse_config(config)
  assert spec.heads == (5, 10, 20, 20)
  assert {c // h for c, h in zip(spec.block_out_channels, spec.heads)} == {64}


def test_attention_implementation_selection():
  assert attn_lib.select_implementation(jnp.bfloat16, 64, "gpu") == "cudnn"
  assert attn_lib.select_implementation(jnp.float16, 40, "cuda") == "cudnn"
  assert attn_lib.select_implementation(jnp.float32, 64, "gpu") == "xla"
  assert attn_lib.select_implementation(jnp.bfloat16, 60, "gpu") == "xla"  # head dim not a multiple of 8
  assert attn_lib.select_implementation(jnp.bfloat16, 64, "cpu") is None
  assert attn_lib.select_implementation(jnp.bfloat16, 64, "tpu") is None


def test_attention_matches_softmax_reference():
  rs = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rs.randn(2, n, 3, 8).astype(np.float32)) for n in (6, 4, 4))
  out = attn_lib.attention(q, k, v)
  probs = attn_lib.attention_probs(q, k)
  chex.assert_shape(probs, (2, 3, 6, 4))
  want = jnp.einsum("bhts,bshd->bthd", probs, v)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_cpu_attention_in_query_blocks_equals_whole():
  """Past the scores budget the CPU path runs the queries in blocks: same values, same gradients."""
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 3, 8)), jnp.float32) for _ in range(3))
  whole = attn_lib._heads_major_attention(q, k, v)
  budget = 4 * 2 * 3 * 12 * 5   # five query rows' scores: blocks of 4 (the largest divisor of 12 up to 5)
  blocks = attn_lib._heads_major_attention(q, k, v, scores_budget=budget)
  np.testing.assert_allclose(np.asarray(blocks), np.asarray(whole), rtol=1e-6, atol=1e-6)
  hlo = jax.jit(lambda q: attn_lib._heads_major_attention(q, k, v, scores_budget=budget)).lower(q).as_text()
  assert "while" in hlo   # the blocks run one after the other
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  g_whole = jax.grad(loss(attn_lib._heads_major_attention), argnums=(0, 1, 2))(q, k, v)
  g_blocks = jax.grad(loss(lambda q, k, v: attn_lib._heads_major_attention(q, k, v, scores_budget=budget)),
                      argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_blocks, g_whole):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
