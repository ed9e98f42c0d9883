"""Loading and saving diffusers pipeline directories (tiny random models written by diffusers/transformers)."""
import copy
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spurjax.diffusion import clip_text, loading, tokenizer as tok_lib, unet as unet_lib, vae as vae_lib
from spurjax.errors import SpurjaxError

UNET_CFG = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=(2, 4), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), in_channels=4, out_channels=4, sample_size=8)
VAE_CFG = dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16)
CLIP_CFG = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)


def _randomise(model, torch, seed):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model.eval()


@pytest.fixture(scope="module")
def torch_pipe(tmp_path_factory):
  """A tiny StableDiffusionPipeline with random weights, saved by diffusers."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  transformers = pytest.importorskip("transformers")
  root = tmp_path_factory.mktemp("sd")
  tok_dir = tok_lib.write_clip_tokenizer(root / "tok_src", vocab_size=1000)
  pipe = diffusers.StableDiffusionPipeline(
      unet=_randomise(diffusers.UNet2DConditionModel(**UNET_CFG), torch, 0),
      vae=_randomise(diffusers.AutoencoderKL(**VAE_CFG), torch, 1),
      text_encoder=_randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CFG)), torch, 2),
      tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tok_dir)),
      scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1),
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(str(root / "pipe"))
  states = {name: {k: v.numpy().copy() for k, v in getattr(pipe, name).state_dict().items()}
            for name in ("unet", "vae", "text_encoder")}
  return dict(torch=torch, pipe=pipe, dir=root / "pipe", states=states)


@pytest.fixture(scope="module")
def loaded(torch_pipe):
  return loading.load_pipeline(torch_pipe["dir"])


def _state_dicts(p: loading.Pipeline) -> dict:
  out = {"unet": unet_lib.unet_to_diffusers(p.unet_params, p.unet.config),
         "text_encoder": {k.removeprefix("text_model."): v
                          for k, v in clip_text.clip_to_transformers(p.text_params).items()}}
  if p.vae is not None:
    out["vae"] = vae_lib.vae_to_diffusers(p.vae_params)
  return out


def _assert_same_states(a: dict, b: dict):
  assert set(a) == set(b)
  for name in a:
    assert set(a[name]) == set(b[name]), name
    for k in a[name]:
      assert a[name][k].dtype == np.float32 and np.array_equal(a[name][k], b[name][k]), (name, k)


def _copy(torch_pipe, tmp_path):
  return shutil.copytree(torch_pipe["dir"], tmp_path / "pipe")


def test_load_matches_torch_pipeline(torch_pipe, loaded):
  p = loaded
  assert isinstance(p.unet, unet_lib.UNet2DConditionModel) and isinstance(p.vae, vae_lib.AutoencoderKL)
  assert isinstance(p.text_encoder, clip_text.CLIPTextModel)
  _assert_same_states(_state_dicts(p), torch_pipe["states"])
  for leaf in jax.tree_util.tree_leaves((p.unet_params, p.vae_params, p.text_params)):
    assert leaf.dtype == np.float32
  assert p.scheduler_config == json.loads((torch_pipe["dir"] / "scheduler/scheduler_config.json").read_text())
  assert (p.is_inpaint, p.vae_scale_factor, p.latent_scale) == (False, 2, 0.18215)
  prompts = ["a photo of a bird", "a bird on water"]
  ids = tok_lib.encode(p.tokenizer, prompts)
  torch = torch_pipe["torch"]
  ref_ids = torch_pipe["pipe"].tokenizer(prompts, padding="max_length", max_length=77, return_tensors="np")
  np.testing.assert_array_equal(ids, ref_ids["input_ids"])
  with torch.no_grad():
    ref = torch_pipe["pipe"].text_encoder(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
  out = jax.jit(p.text_encoder.apply)({"params": p.text_params}, ids)
  assert float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()) < 1e-4


def test_save_load_round_trip_is_bit_exact(loaded, tmp_path):
  out = loading.save_pipeline(loaded, tmp_path / "saved")
  index = json.loads((out / "model_index.json").read_text())
  assert index["_class_name"] == "StableDiffusionPipeline"
  assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
  again = loading.load_pipeline(out)
  _assert_same_states(_state_dicts(again), _state_dicts(loaded))
  assert again.scheduler_config == loaded.scheduler_config
  prompt = ["A photo of a duck, on land!"]
  np.testing.assert_array_equal(tok_lib.encode(again.tokenizer, prompt), tok_lib.encode(loaded.tokenizer, prompt))
  assert again.unet.config["cross_attention_dim"] == 32 and again.path == str(out)


def test_diffusers_reads_saved_pipeline_with_new_token(torch_pipe, loaded, tmp_path):
  diffusers = pytest.importorskip("diffusers")
  tokenizer = loading.load_pipeline(torch_pipe["dir"], components=["tokenizer"]).tokenizer
  (new_id,) = tok_lib.add_placeholder_tokens(tokenizer, ["<c0>"])
  bird = int(tok_lib.encode(tokenizer, "bird")[0, 1])
  text_params = clip_text.resize_token_embeddings(loaded.text_params, new_id + 1, {new_id: bird})
  with pytest.raises(SpurjaxError, match="resize_token_embeddings"):
    loading.save_pipeline({**vars(loaded), "tokenizer": tokenizer}, tmp_path / "bad")
  parts = {**vars(loaded), "tokenizer": tokenizer, "text_params": text_params}
  out = loading.save_pipeline(parts, tmp_path / "ti")
  ref = diffusers.StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
  assert ref.text_encoder.config.vocab_size == 1001 and len(ref.tokenizer) == 1001
  assert ref.tokenizer("a <c0> bird")["input_ids"][2] == new_id
  emb = ref.text_encoder.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_array_equal(emb[new_id], emb[bird])
  states = {name: {k: v.numpy() for k, v in getattr(ref, name).state_dict().items()} for name in ("unet", "vae")}
  _assert_same_states(states, {k: torch_pipe["states"][k] for k in ("unet", "vae")})
  back = loading.load_pipeline(out, components=["text_encoder", "tokenizer"])
  assert clip_text.vocab_size_of(back.text_params) == 1001 and back.text_encoder.config["vocab_size"] == 1001


def test_inpainting_unet_and_pixel_space_pipeline(tmp_path):
  config = {**UNET_CFG, "in_channels": 9}
  params = unet_lib.init_unet_params(config, jax.random.key(0))
  out = loading.save_pipeline({"unet": config, "unet_params": params,
                               "scheduler_config": {"_class_name": "DDIMScheduler"}}, tmp_path / "inp")
  index = json.loads((out / "model_index.json").read_text())
  assert index["_class_name"] == "StableDiffusionInpaintPipeline" and index["vae"] == [None, None]
  p = loading.load_pipeline(out, components=["unet", "vae", "scheduler"])
  assert p.is_inpaint and p.vae is None and p.vae_params is None and p.vae_scale_factor == 1
  leaves = zip(jax.tree_util.tree_leaves(p.unet_params), jax.tree_util.tree_leaves(params))
  assert all(np.array_equal(a, b) for a, b in leaves)


@pytest.mark.parametrize("in_channels,out_channels,inpaint", [(7, 3, True), (3, 3, False), (9, 4, True), (4, 4, False),
                                                              (9, 3, False)])
def test_inpainting_unet_is_two_c_plus_one_channels(tmp_path, in_channels, out_channels, inpaint):
  config = {**UNET_CFG, "in_channels": in_channels, "out_channels": out_channels}
  params = unet_lib.init_unet_params(config, jax.random.key(0))
  out = loading.save_pipeline({"unet": config, "unet_params": params,
                               "scheduler_config": {"_class_name": "DDIMScheduler"}}, tmp_path / "u")
  index = json.loads((out / "model_index.json").read_text())
  assert (index["_class_name"] == "StableDiffusionInpaintPipeline") == inpaint
  assert loading.load_pipeline(out, components=["unet", "vae", "scheduler"]).is_inpaint == inpaint


def test_sharded_weights_load(torch_pipe, loaded, tmp_path):
  d = _copy(torch_pipe, tmp_path)
  pipe = torch_pipe["pipe"]
  for name in ("unet", "vae", "text_encoder"):
    shutil.rmtree(d / name)
    getattr(pipe, name).save_pretrained(str(d / name), max_shard_size="40KB")
  assert len(list((d / "unet").glob("*.safetensors"))) > 1
  assert (d / "vae" / "diffusion_pytorch_model.safetensors.index.json").is_file()
  assert (d / "text_encoder" / "model.safetensors.index.json").is_file()
  _assert_same_states(_state_dicts(loading.load_pipeline(d, components=["unet", "vae", "text_encoder"])),
                      _state_dicts(loaded))
  low = loading.load_pipeline(d, dtype=jnp.bfloat16, components=["vae"])
  assert low.vae.dtype == jnp.bfloat16 and low.unet is None and low.tokenizer is None
  assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(low.vae_params))
  shard = sorted((d / "vae").glob("*-of-*.safetensors"))[-1]
  shard.unlink()
  with pytest.raises(SpurjaxError, match=f"{shard.name}: safetensors file not found"):
    loading.load_pipeline(d, components=["vae"])


def test_fp16_variant_and_bf16_weights(torch_pipe, tmp_path):
  torch = torch_pipe["torch"]
  vae = torch_pipe["pipe"].vae
  copy.deepcopy(vae).half().save_pretrained(str(tmp_path / "fp16"), variant="fp16")
  _, params = loading.load_vae(tmp_path / "fp16", variant="fp16")
  want = {k: v.half().float().numpy() for k, v in vae.state_dict().items()}
  got = vae_lib.vae_to_diffusers(params)
  assert all(np.array_equal(got[k], want[k]) for k in want)
  with pytest.raises(SpurjaxError, match="no safetensors weights"):
    loading.load_vae(tmp_path / "fp16")
  copy.deepcopy(vae).to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
  _, params = loading.load_vae(tmp_path / "bf16")
  want = {k: v.to(torch.bfloat16).float().numpy() for k, v in vae.state_dict().items()}
  got = vae_lib.vae_to_diffusers(params)
  assert all(np.array_equal(got[k], want[k]) for k in want)


def _edit_json(path, **changes):
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data))


def _edit_tensors(path, fn):
  tensors = dict(load_file(str(path)))
  fn(tensors)
  save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_paths_are_named(torch_pipe, tmp_path):
  with pytest.raises(SpurjaxError, match="nowhere: pipeline directory not found"):
    loading.load_pipeline(tmp_path / "nowhere")
  d = _copy(torch_pipe, tmp_path)
  shutil.rmtree(d / "text_encoder")
  with pytest.raises(SpurjaxError, match="text_encoder: component folder 'text_encoder' not found"):
    loading.load_pipeline(d)
  (d / "vae" / "config.json").unlink()
  with pytest.raises(SpurjaxError, match="vae/config.json: file not found"):
    loading.load_pipeline(d, components=["vae"])
  (d / "scheduler" / "scheduler_config.json").write_text("{oops")
  with pytest.raises(SpurjaxError, match="scheduler_config.json: invalid JSON"):
    loading.load_pipeline(d, components=["scheduler"])
  weights = d / "unet" / "diffusion_pytorch_model.safetensors"
  weights.rename(d / "unet" / "diffusion_pytorch_model.bin")
  with pytest.raises(SpurjaxError, match=r"unet: no safetensors weights \(found diffusion_pytorch_model.bin"):
    loading.load_pipeline(d, components=["unet"])
  (d / "model_index.json").unlink()
  with pytest.raises(SpurjaxError, match="model_index.json not found"):
    loading.load_pipeline(d)


def test_bad_tensors_are_named(torch_pipe, tmp_path):
  d = _copy(torch_pipe, tmp_path)
  te = d / "text_encoder" / "model.safetensors"
  _edit_tensors(te, lambda t: t.pop("encoder.layers.1.mlp.fc2.bias"))
  with pytest.raises(SpurjaxError, match=r"model.safetensors: missing tensor 'encoder.layers.1.mlp.fc2.bias'"):
    loading.load_pipeline(d, components=["text_encoder"])
  vae = d / "vae" / "diffusion_pytorch_model.safetensors"
  _edit_tensors(vae, lambda t: t.update({"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)}))
  with pytest.raises(SpurjaxError, match=r"diffusion_pytorch_model.safetensors: tensor 'encoder.conv_in.weight' "
                                         r"has shape \(8, 3, 5, 5\)"):
    loading.load_pipeline(d, components=["vae"])
  unet = d / "unet" / "diffusion_pytorch_model.safetensors"
  _edit_tensors(unet, lambda t: t.pop("conv_out.weight"))
  with pytest.raises(SpurjaxError, match="missing tensor 'conv_out.weight'"):
    loading.load_pipeline(d, components=["unet"])


def test_bad_configs_and_components_are_named(torch_pipe, tmp_path):
  d = _copy(torch_pipe, tmp_path)
  with pytest.raises(SpurjaxError, match="unknown component 'safety_checker'"):
    loading.load_pipeline(d, components=["safety_checker"])
  _edit_json(d / "vae" / "config.json", act_fn="gelu")
  with pytest.raises(SpurjaxError, match="vae/config.json: act_fn='gelu'"):
    loading.load_pipeline(d, components=["vae"])
  _edit_json(d / "text_encoder" / "config.json", hidden_act="relu")
  with pytest.raises(SpurjaxError, match="text_encoder/config.json: hidden_act='relu'"):
    loading.load_pipeline(d, components=["text_encoder"])
  _edit_json(d / "unet" / "config.json", class_embed_type="timestep")
  with pytest.raises(SpurjaxError, match="class_embed_type"):
    loading.load_pipeline(d, components=["unet"])
  _edit_json(d / "model_index.json", text_encoder=["transformers", "T5EncoderModel"])
  with pytest.raises(SpurjaxError, match="'text_encoder' has class 'T5EncoderModel'"):
    loading.load_pipeline(d, components=["text_encoder"])
  index = json.loads((d / "model_index.json").read_text())
  del index["unet"]
  (d / "model_index.json").write_text(json.dumps(index))
  with pytest.raises(SpurjaxError, match="no 'unet' component"):
    loading.load_pipeline(d, components=["unet"])
  with pytest.raises(SpurjaxError, match="unknown part 'feature_extractor'"):
    loading.save_pipeline({"feature_extractor": None}, tmp_path / "x")
