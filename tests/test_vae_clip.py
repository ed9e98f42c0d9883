"""Flax VAE and CLIP text encoder against diffusers / transformers (PyTorch), and the CLIP tokenizer."""
import gzip
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax.diffusion import clip_text, tokenizer as tok_lib, vae as vae_lib
from spurjax.errors import SpurjaxError

VAE_CFG = dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16)
CLIP_CFG = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)


def _randomise(model, torch, seed, scale=0.3):
  """Every weight random (norm scales and biases included), so no layer is an identity."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * scale)
  return model.eval()


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------- VAE


@pytest.fixture(scope="module")
def torch_vae():
  """A random diffusers VAE, its state dict and config, and reference encode/decode outputs (NCHW)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  model = _randomise(diffusers.AutoencoderKL(**VAE_CFG), torch, 0)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  x = np.random.RandomState(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  z = np.random.RandomState(1).randn(2, 4, 8, 8).astype(np.float32)
  with torch.no_grad():
    dist = model.encode(torch.from_numpy(x)).latent_dist
    ref = dict(x=x, z=z, mean=dist.mean.numpy(), logvar=dist.logvar.numpy(),
               dec=model.decode(torch.from_numpy(z)).sample.numpy())
  return state, dict(model.config), ref


def _decode_fn(config, dtype=jnp.float32):
  module = vae_lib.AutoencoderKL(config, dtype)
  return jax.jit(lambda p, v: module.apply({"params": p}, v, method="decode"))


@pytest.mark.slow
def test_vae_encode_decode_match_diffusers(torch_vae):
  state, config, ref = torch_vae
  params = vae_lib.vae_from_diffusers(state, config)
  module = vae_lib.AutoencoderKL(config)
  mean, logvar = jax.jit(lambda p, v: module.apply({"params": p}, v, method="encode"))(params, _nhwc(ref["x"]))
  dec = _decode_fn(config)(params, _nhwc(ref["z"]))
  chex.assert_shape([mean, logvar], (2, 8, 8, 4))
  chex.assert_shape(dec, (2, 16, 16, 3))
  assert _rel_err(_nchw(mean), ref["mean"]) < 1e-4
  assert _rel_err(_nchw(logvar), ref["logvar"]) < 1e-4
  assert _rel_err(_nchw(dec), ref["dec"]) < 1e-4
  assert vae_lib.downscale_factor(config) == 2


def test_vae_state_dict_round_trip_and_init_layout(torch_vae):
  state, config, _ = torch_vae
  back = vae_lib.vae_to_diffusers(vae_lib.vae_from_diffusers(state, config), config)
  assert set(back) == set(state)
  for k, v in state.items():
    assert back[k].dtype == np.float32 and np.array_equal(back[k], v), k
  fresh = vae_lib.vae_to_diffusers(vae_lib.init_vae_params(config, jax.random.key(0)))
  assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in state.items()}
  w = fresh["decoder.conv_in.weight"]  # (16, 4, 3, 3): fan_in 36
  assert abs(float(w.std()) - 1 / 6) < 0.05 and float(np.abs(fresh["decoder.conv_in.bias"]).max()) == 0.0
  assert np.all(fresh["encoder.conv_norm_out.weight"] == 1.0)


def test_vae_reads_old_attention_names(torch_vae):
  state, config, _ = torch_vae
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  old = {}
  for k, v in state.items():
    for new, legacy in renames.items():
      k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
    old[k] = v
  assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
  a = jax.tree_util.tree_leaves(vae_lib.vae_from_diffusers(old, config))
  b = jax.tree_util.tree_leaves(vae_lib.vae_from_diffusers(state, config))
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_vae_bfloat16_activations_stay_close(torch_vae):
  state, config, ref = torch_vae
  params = vae_lib.vae_from_diffusers(state, config)
  low = _decode_fn(config, jnp.bfloat16)(params, _nhwc(ref["z"]))
  assert low.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(low)))
  assert _rel_err(_nchw(low), ref["dec"]) < 0.1


def test_vae_sample_latent_statistics():
  mean = jnp.full((4, 8, 8, 4), 2.0)
  logvar = jnp.full((4, 8, 8, 4), np.log(0.25))
  z = vae_lib.sample_latent(jax.random.key(0), mean, logvar)
  assert abs(float(z.mean()) - 2.0) < 0.1 and abs(float(z.std()) - 0.5) < 0.05


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]),
    ("up_block_types", ["UpDecoderBlock2D"]),
    ("act_fn", "gelu"),
    ("norm_num_groups", 3),
    ("shift_factor", 0.1),
    ("block_out_channels", []),
])
def test_vae_unsupported_config_names_key(key, value):
  with pytest.raises(SpurjaxError, match=key):
    vae_lib.vae_config({**VAE_CFG, key: value})


def test_vae_missing_misshaped_and_extra_tensors_are_named(torch_vae):
  state, config, _ = torch_vae
  key = "decoder.up_blocks.1.resnets.0.conv1.weight"
  with pytest.raises(SpurjaxError, match=r"vae\.st: missing tensor 'decoder\.up_blocks\.1\.resnets\.0\.conv1\.weight'"):
    vae_lib.vae_from_diffusers({k: v for k, v in state.items() if k != key}, config, "vae.st")
  with pytest.raises(SpurjaxError, match=f"'{key}' has shape"):
    vae_lib.vae_from_diffusers({**state, key: state[key][:, :, :2]}, config)
  with pytest.raises(SpurjaxError, match="unexpected tensor 'encoder.extra.weight'"):
    vae_lib.vae_from_diffusers({**state, "encoder.extra.weight": np.zeros(3, np.float32)}, config)


# ---------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def torch_clip(request):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = transformers.CLIPTextConfig(**CLIP_CFG, hidden_act=request.param)
  model = _randomise(transformers.CLIPTextModel(cfg), torch, 1)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return torch, model, state, cfg.to_dict()


@pytest.mark.slow
def test_clip_hidden_states_match_transformers(torch_clip):
  torch, model, state, config = torch_clip
  params = clip_text.clip_from_transformers(state, config)
  ids = np.random.RandomState(0).randint(0, 1000, (2, 77))
  mask = np.ones((2, 77), np.int64)
  mask[1, 50:] = 0  # right padding in the second prompt
  with torch.no_grad():
    ref = model(torch.from_numpy(ids), output_hidden_states=True)
    ref_masked = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  module = clip_text.CLIPTextModel(config)
  assert hash(module) == hash(clip_text.CLIPTextModel(dict(config)))  # usable as a static jit argument
  last, states = jax.jit(lambda p, i: module.apply({"params": p}, i, output_hidden_states=True))(params, ids)
  chex.assert_shape(last, (2, 77, 32))
  assert _rel_err(last, ref.last_hidden_state.numpy()) < 1e-4
  assert len(states) == len(ref.hidden_states) == 3
  for ours, theirs in zip(states, ref.hidden_states):
    assert _rel_err(ours, theirs.numpy()) < 1e-4
  masked = module.apply({"params": params}, ids, attention_mask=mask)
  assert _rel_err(masked, ref_masked) < 1e-4


def test_clip_state_dict_round_trip_with_and_without_prefix(torch_clip):
  _, _, state, config = torch_clip
  plain = clip_text.clip_from_transformers(state, config)
  prefixed = {"text_model." + k: v for k, v in state.items()}
  prefixed["text_model.embeddings.position_ids"] = np.arange(77)[None]  # older checkpoints carry this buffer
  back = clip_text.clip_to_transformers(clip_text.clip_from_transformers(prefixed, config))
  assert set(back) == {"text_model." + k for k in state}
  for k, v in state.items():
    assert np.array_equal(back["text_model." + k], v), k
  fresh = clip_text.clip_to_transformers(clip_text.init_clip_params(config, jax.random.key(0)))
  assert {k: v.shape for k, v in fresh.items()} == {"text_model." + k: v.shape for k, v in state.items()}
  assert clip_text.vocab_size_of(plain) == 1000


def test_resize_token_embeddings_copies_initialiser_rows():
  cfg = {k: v for k, v in CLIP_CFG.items() if not k.endswith("token_id")}
  params = clip_text.init_clip_params(cfg, jax.random.key(0))
  grown = clip_text.resize_token_embeddings(params, 1002, {1000: 7, 1001: 320})
  table = np.asarray(grown["embeddings"]["token_embedding"]["embedding"])
  old = np.asarray(params["embeddings"]["token_embedding"]["embedding"])
  assert table.shape == (1002, 32) and old.shape == (1000, 32)
  np.testing.assert_array_equal(table[:1000], old)
  np.testing.assert_array_equal(table[1000], old[7])
  np.testing.assert_array_equal(table[1001], old[320])
  module = clip_text.CLIPTextModel(cfg)  # the same module accepts the grown table
  out = jax.jit(module.apply)({"params": grown}, jnp.array([[998, 1000, 999], [998, 7, 999]]))
  np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-6)
  with pytest.raises(SpurjaxError, match="init_rows key 5"):
    clip_text.resize_token_embeddings(params, 1002, {5: 1})
  with pytest.raises(SpurjaxError, match="smaller"):
    clip_text.resize_token_embeddings(params, 10)


def test_clip_config_and_length_errors():
  with pytest.raises(SpurjaxError, match="hidden_act"):
    clip_text.clip_config({**CLIP_CFG, "hidden_act": "relu"})
  with pytest.raises(SpurjaxError, match="num_attention_heads"):
    clip_text.clip_config({**CLIP_CFG, "num_attention_heads": 5})
  cfg = {**CLIP_CFG, "max_position_embeddings": 4}
  params = clip_text.init_clip_params(cfg, jax.random.key(0))
  with pytest.raises(SpurjaxError, match="max_position_embeddings"):
    clip_text.CLIPTextModel(cfg).apply({"params": params}, jnp.zeros((1, 5), jnp.int32))


# ---------------------------------------------------------------------------------------------- tokenizer


def _reference_bpe(text, merges):
  """Plain CLIP BPE (lowercase, word split, bytes as symbols, lowest-rank merge first) -> token strings."""
  import regex
  keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
  sym, n = {}, 0
  for b in range(256):
    if b in keep:
      sym[b] = chr(b)
    else:
      sym[b], n = chr(256 + n), n + 1
  ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
  out = []
  words = regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", " ".join(text.lower().split()))
  for word in words:
    parts = [sym[b] for b in word.encode("utf-8")]
    parts[-1] += "</w>"
    while len(parts) > 1:
      pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
      rank, i = min(pairs)
      if rank == 1 << 30:
        break
      first, second = parts[i], parts[i + 1]
      merged, j = [], 0
      while j < len(parts):
        if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
          merged.append(first + second)
          j += 2
        else:
          merged.append(parts[j])
          j += 1
      parts = merged
    out += parts
  return out


PROMPTS = ["a photo of a bird", "A photo of a <c0>-like waterbird on LAND, 2 ducks!", "Straße café naïve 42"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  pytest.importorskip("transformers")
  root = tmp_path_factory.mktemp("tok")
  full = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(root / "full"))
  small = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(root / "small", vocab_size=1000))
  return root, full, small


def test_full_vocabulary_gives_clip_ids(tokenizers):
  _, full, _ = tokenizers
  assert len(full) == 49408
  ids = tok_lib.encode(full, ["a photo of a bird", "a diagram", "a dog", "a cat"], max_length=8)
  assert ids.dtype == np.int32 and ids.shape == (4, 8)
  assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 3329, 49407, 49407]
  assert ids[1, :4].tolist() == [49406, 320, 22697, 49407]
  assert ids[2, :4].tolist() == [49406, 320, 1929, 49407]
  assert ids[3, :4].tolist() == [49406, 320, 2368, 49407]


@pytest.mark.parametrize("which", ["full", "small"])
def test_tokenizer_matches_reference_bpe(tokenizers, which):
  root, full, small = tokenizers
  tok = full if which == "full" else small
  merges = (root / which / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
  vocab = json.loads((root / which / "vocab.json").read_text(encoding="utf-8"))
  assert len(vocab) == (49408 if which == "full" else 1000) and vocab["<|endoftext|>"] == len(vocab) - 1
  for prompt in PROMPTS:
    want = [vocab["<|startoftext|>"]] + [vocab[t] for t in _reference_bpe(prompt, merges)] + [vocab["<|endoftext|>"]]
    got = tok_lib.encode(tok, [prompt], max_length=40)[0]
    assert got[:len(want)].tolist() == want, prompt
    assert (got[len(want):] == vocab["<|endoftext|>"]).all()


def test_asset_merge_count():
  import importlib.resources
  raw = importlib.resources.files("spurjax").joinpath("assets/clip/bpe_simple_vocab_16e6.txt.gz").read_bytes()
  assert len(gzip.decompress(raw).decode("utf-8").split("\n")) > 48895


def test_placeholder_tokens_and_truncation(tmp_path):
  pytest.importorskip("transformers")
  tok = tok_lib.load_tokenizer(tok_lib.write_clip_tokenizer(tmp_path, vocab_size=600, pad_token="!"))
  ids = tok_lib.add_placeholder_tokens(tok, ["<c0>", "<c1>"])
  assert ids == [600, 601]
  enc = tok_lib.encode(tok, "a photo of a <c1> bird", max_length=77)
  assert enc.shape == (1, 77) and 601 in enc[0].tolist()
  assert enc[0, -1] == tok.convert_tokens_to_ids("!")  # SD2-style padding
  long = tok_lib.encode(tok, ["bird " * 50], max_length=10)[0]
  assert long[0] == 598 and long[-1] == 599  # BOS ... EOS kept after truncation
  for bad in (["<c0>"], ["<|endoftext|>"], ["a</w>"], ["<x>", "<x>"], ["two words"], [""]):
    with pytest.raises(SpurjaxError, match="placeholder token"):
      tok_lib.add_placeholder_tokens(tok, bad)
  with pytest.raises(SpurjaxError, match="vocab_size"):
    tok_lib.write_clip_tokenizer(tmp_path / "x", vocab_size=100)
  with pytest.raises(SpurjaxError, match="tokenizer directory not found"):
    tok_lib.load_tokenizer(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(SpurjaxError, match="no tokenizer files"):
    tok_lib.load_tokenizer(tmp_path / "empty")
