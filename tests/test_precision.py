"""diffusion.dtype and the diffusion weights on the devices: the config value resolved and checked before any
stage, in the stages' identity, weights placed once per context (no upload on later calls, not consumed by
textual inversion's donating step), bf16 storage, and cuDNN fused attention counted in the compiled UNet."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import toy_config, toy_table, write_tiny_pipeline
from spurjax import sharding as shd
from spurjax.context import Context
from spurjax.diffusion import attention as attn_lib, loading, pipeline_sampling, precision, unet as unet_lib
from spurjax.errors import SpurjaxError

UNET = dict(block_out_channels=(32,), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
            attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), in_channels=4, out_channels=4, sample_size=8)  # head dim 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return write_tiny_pipeline(tmp_path_factory.mktemp("prior"))


def _ctx(tmp_path, model_dir, dtype="auto", mesh="make"):
  cfg = toy_config()
  cfg.diffusion.path = model_dir
  cfg.diffusion.dtype = dtype
  return Context(cfg=cfg, workdir=str(tmp_path), table=toy_table(), mesh=shd.make_mesh() if mesh == "make" else mesh)


def test_dtype_values_resolve_and_a_bad_one_names_the_key():
  assert precision.resolve_dtype("auto", "cpu") == "float32"
  assert precision.resolve_dtype("auto", "gpu") == precision.resolve_dtype("auto", "tpu") == "bfloat16"
  assert precision.resolve_dtype("float32", "gpu") == "float32"
  assert precision.resolve_dtype("bfloat16", "cpu") == "bfloat16"
  with pytest.raises(SpurjaxError, match=r"diffusion\.dtype='fp16'"):
    precision.resolve_dtype("fp16")


def test_a_bad_dtype_fails_before_any_stage_with_nothing_written(tmp_path, capsys):
  from spurjax import cli
  from test_folder import make_folder
  data = tmp_path / "data"
  make_folder(str(data))
  before = sorted(os.listdir(tmp_path))
  args = ["run", "--config", "configs/synth.py:tiny", "--workdir", str(tmp_path / "work"),
          "--config.data.kind=folder", f"--config.data.root={data}", "--config.diffusion.dtype=half"]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "diffusion.dtype='half'" in err, err
  assert sorted(os.listdir(tmp_path)) == before


def test_the_resolved_dtype_is_in_the_stages_identity(tmp_path, model_dir):
  auto, fp32, bf16 = (_ctx(tmp_path, model_dir, d) for d in ("auto", "float32", "bfloat16"))
  assert jax.default_backend() == "cpu"
  assert auto.diffusion_dtype == "float32"
  assert auto.diffusion_digest == fp32.diffusion_digest   # as before the setting existed: CPU folders stay valid
  assert bf16.diffusion_digest == fp32.diffusion_digest + ":bfloat16"
  assert bf16.inpaint_digest == bf16.diffusion_digest


def _leaves(pipe):
  return jax.tree.leaves((pipe.unet_params, pipe.text_params))


def test_load_pipeline_places_the_weights_once_and_calls_upload_nothing(tmp_path, model_dir):
  ctx = _ctx(tmp_path, model_dir)
  pipe = ctx.load_pipeline()
  assert ctx.load_pipeline() is pipe
  devices = set(ctx.mesh.devices.flat)
  assert len(devices) == 4
  for a in _leaves(pipe):
    assert isinstance(a, jax.Array) and a.is_fully_replicated and a.dtype == jnp.float32
    assert set(a.sharding.device_set) == devices
  host = loading.load_pipeline(model_dir)
  np.testing.assert_array_equal(np.asarray(pipeline_sampling.encode_prompts(pipe, ["a photo of a cat"])),
                                np.asarray(pipeline_sampling.encode_prompts(host, ["a photo of a cat"])))

  rs = np.random.RandomState(0)
  side = int(pipe.unet.config["sample_size"])
  x, t, c = shd.replicate((rs.randn(4, side, side, 3).astype(np.float32), np.arange(4, dtype=np.int32),
                           rs.randn(4, 5, 16).astype(np.float32)), ctx.mesh)
  unet = jax.jit(lambda p, x, t, c: pipe.unet.apply({"params": p}, x, t, c))
  ids = shd.replicate(np.ones((2, 77), np.int32), ctx.mesh)
  first = unet(pipe.unet_params, x, t, c)
  text = pipeline_sampling._text_forward(pipe.text_encoder, pipe.text_params, ids)
  with jax.transfer_guard("disallow"):   # host weights would be uploaded again here, and refused
    np.testing.assert_array_equal(np.asarray(unet(pipe.unet_params, x, t, c)), np.asarray(first))
    again = pipeline_sampling._text_forward(pipe.text_encoder, pipe.text_params, ids)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(text))
  with pytest.raises(Exception, match="host-to-device"):
    with jax.transfer_guard("disallow"):
      unet(host.unet_params, x, t, c)


def test_without_a_mesh_the_weights_go_to_the_default_device(tmp_path, model_dir):
  pipe = _ctx(tmp_path, model_dir, mesh=None).load_pipeline()
  assert all(isinstance(a, jax.Array) for a in _leaves(pipe))


def test_bf16_stores_unet_and_vae_in_bf16_and_keeps_the_text_encoder_fp32():
  cfg = dict(block_out_channels=[4, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
  from spurjax.diffusion import vae as vae_lib
  vcfg = vae_lib.vae_config(cfg)
  unet_params = jax.tree.map(np.asarray, unet_lib.init_unet_params(UNET, jax.random.key(0)))
  pipe = loading.Pipeline(unet=unet_lib.UNet2DConditionModel(UNET), unet_params=unet_params,
                          vae=vae_lib.AutoencoderKL(vcfg), vae_params=vae_lib.init_vae_params(vcfg, jax.random.key(1)),
                          text_params={"w": np.ones((3, 2), np.float32)})
  mesh = shd.make_mesh()
  out = precision.prepare(pipe, "bfloat16", mesh)
  assert out.unet.dtype == jnp.bfloat16 and out.vae.dtype == jnp.bfloat16
  assert {a.dtype for a in jax.tree.leaves((out.unet_params, out.vae_params))} == {jnp.dtype(jnp.bfloat16)}
  assert out.text_params["w"].dtype == jnp.float32 and out.text_params["w"].is_fully_replicated
  same = precision.prepare(pipe, "float32", mesh)
  assert same.unet is pipe.unet
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(same.unet_params)[0]), jax.tree.leaves(unet_params)[0])
  img = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32))
  want, _ = pipe.vae.apply({"params": pipe.vae_params}, img, method="encode")
  got, _ = out.vae.apply({"params": out.vae_params}, img, method="encode")
  assert got.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 0.05


def _unet_inputs(batch=2):
  rs = np.random.RandomState(1)
  return (jnp.asarray(rs.randn(batch, 8, 8, 4).astype(np.float32)), jnp.asarray([10, 700][:batch], jnp.int32),
          jnp.asarray(rs.randn(batch, 5, 16).astype(np.float32)))


def test_fused_attention_calls_counts_cudnn_custom_calls():
  hlo = ('%custom-call.3 = (bf16[2,64,2,16]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b, %c), '
         'custom_call_target="__cudnn$fmhaSoftmax", backend_config={}\n'
         '%custom-call.9 = (bf16[2,64,2,16]{3,2,1,0}) custom-call(%d), custom_call_target="__cudnn$fmhaSoftmaxBackward"\n'
         '%custom-call.4 = f32[4]{0} custom-call(%e), custom_call_target="__cublas$gemm"\n')
  assert attn_lib.fused_attention_calls(hlo) == 2
  stablehlo = '%0:2 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%q, %k, %v) {backend_config = ""}'
  assert attn_lib.fused_attention_calls(stablehlo) == 1
  assert attn_lib.fused_attention_calls("") == 0


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the CPU half of the check")
def test_bf16_unet_on_cpu_compiles_without_fused_attention_and_tracks_fp32():
  params = unet_lib.init_unet_params(UNET, jax.random.key(0))
  x, t, c = _unet_inputs()
  fp32 = unet_lib.UNet2DConditionModel(UNET)
  bf16 = unet_lib.UNet2DConditionModel(UNET, dtype=jnp.bfloat16)
  stored = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  compiled = jax.jit(bf16.apply).lower({"params": stored}, x, t, c).compile()
  assert attn_lib.fused_attention_calls(compiled.as_text()) == 0
  want = np.asarray(jax.jit(fp32.apply)({"params": params}, x, t, c))
  got = compiled({"params": stored}, x, t, c)
  assert got.dtype == jnp.float32
  rel = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
  assert 0 < rel < 5e-2, rel


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN fused attention needs a CUDA GPU")
def test_bf16_unet_on_gpu_runs_its_attention_in_cudnn_fused_calls():
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), unet_lib.init_unet_params(UNET, jax.random.key(0)))
  model = unet_lib.UNet2DConditionModel(UNET, dtype=jnp.bfloat16)
  x, t, c = _unet_inputs()
  compiled = jax.jit(model.apply).lower({"params": params}, x, t, c).compile()
  assert attn_lib.fused_attention_calls(compiled.as_text()) > 0
  assert np.isfinite(np.asarray(compiled({"params": params}, x, t, c))).all()


def test_pipeline_params_are_fresh_buffers_a_donating_step_may_consume():
  from spurjax.diffusion import train as dtrain
  mesh = shd.make_mesh()
  pipe = precision.place(loading.Pipeline(unet_params={"w": np.ones(3, np.float32)},
                                          text_params={"e": np.zeros((2, 2), np.float32)}), mesh)
  params = dtrain.pipeline_params(pipe)
  assert params["unet"]["w"] is not pipe.unet_params["w"]
  jax.jit(lambda p: jax.tree.map(lambda a: a + 1, p), donate_argnums=0)(shd.replicate(params, mesh))
  assert params["unet"]["w"].is_deleted() and not pipe.unet_params["w"].is_deleted()
  np.testing.assert_array_equal(np.asarray(pipe.unet_params["w"]), np.ones(3, np.float32))


@pytest.mark.slow
def test_textual_inversion_runs_on_device_weights_and_leaves_them_usable(tmp_path, model_dir):
  """Both modes (per_class: one donating run after another on the same weights), same tokens as from host weights."""
  from spurjax.diffusion import invert, token_embeds
  ctx = _ctx(tmp_path, model_dir)
  pipe = ctx.load_pipeline()
  rng = np.random.default_rng(0)
  images = {c: rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for c in (0, 1)}
  kw = dict(steps=2, batch=4, grad_accum=1, lr=5e-2, mesh=ctx.mesh)
  for mode in ("per_class", "joint"):
    out, emb = invert.learn_tokens(pipe, images, ["bird", "flower"], mode=mode, **kw)
    _, ref = invert.learn_tokens(loading.load_pipeline(model_dir), images, ["bird", "flower"], mode=mode, **kw)
    for tok in ref:
      np.testing.assert_allclose(emb[tok], ref[tok], rtol=1e-6, atol=1e-7)
    assert not any(a.is_deleted() for a in _leaves(pipe))
    table = out.text_params["embeddings"]["token_embedding"]["embedding"]
    assert len(table) == len(pipe.tokenizer) + 2
  added, _ = token_embeds.add_tokens(pipe, ["<x>"], [np.zeros(16, np.float32)])   # the grown table stays placed
  assert added.text_params["embeddings"]["token_embedding"]["embedding"].is_fully_replicated
