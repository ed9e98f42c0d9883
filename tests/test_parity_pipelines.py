"""End-to-end parity with diffusers on identical tiny random weights (saved by diffusers, loaded by spurjax).

1. One 9-channel inpainting call with classifier-free guidance, 3 DDIM steps (eta 0) from the same initial
   noise, against `diffusers.StableDiffusionInpaintPipeline`: images and final latents.
2. The textual-inversion loss (epsilon target, mean squared error) and its gradient on the placeholder
   token's embedding row, against the computation of diffusers' textual-inversion training script written
   here in torch, for the same pixels, VAE posterior draw, noise and timesteps.

Conventions that differ on purpose, and how the tests line them up:
- spurjax encodes the masked image to the VAE posterior mean; diffusers' inpainting pipeline draws a
  posterior sample. The inpainting VAE here has a posterior std of exp(-15) (logvar at diffusers' clamp,
  -30), so the two agree to float32 precision; the loss test keeps a real posterior variance and gives
  torch spurjax's draw.
- `inpaint_channels(keep_known=True)` (what `pipeline_sampling.inpaint_images` uses) pastes the known
  latents back outside the mask before decoding; diffusers' 9-channel pipeline does not, so the test runs
  `keep_known=False`.
- spurjax draws its initial noise from `fold_in(rng, example)` (`sampling_loop.noise_program`); diffusers
  is given that noise as `latents=` (DDIM's init_noise_sigma is 1).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spurjax.diffusion import loading, objective, pipeline_sampling as ps, sampling, schedulers
from spurjax.diffusion import tokenizer as tok_lib
from spurjax.diffusion.invert import DEFAULT_TEMPLATES
from spurjax.diffusion.sampling_loop import noise_program
from spurjax.diffusion.token_embeds import add_tokens
from test_unet import _randomise

pytestmark = pytest.mark.slow

SIDE = 16  # pixels; the VAE halves it, so latents are 8 x 8 x 4
# One level (plus the cross-attention mid block): XLA's CPU compile time grows quickly with UNet depth.
UNET_CFG = dict(block_out_channels=(32,), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=(2,), use_linear_projection=True, out_channels=4, sample_size=SIDE // 2,
                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",))
VAE_CFG = dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
               sample_size=SIDE)
CLIP_CFG = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=0)
SCHED_CFG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
PROMPTS = ["a photo of a bird", "a red square on grass"]
PLACEHOLDER = "<c0>"


def _pipeline(root, name, in_channels, seed, torch, diffusers, transformers, exact_posterior=False):
  """A tiny SD-2-like pipeline (linear projections, "!" padding) saved by diffusers; returns (torch pipe, dir)."""
  tokenizer = transformers.CLIPTokenizer.from_pretrained(
      str(tok_lib.write_clip_tokenizer(root / f"{name}-tok", vocab_size=1000, pad_token="!", model_max_length=16)))
  unet = diffusers.UNet2DConditionModel(**UNET_CFG, in_channels=in_channels)
  vae = diffusers.AutoencoderKL(**VAE_CFG)
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CFG))
  for k, m in enumerate((unet, vae, text)):
    _randomise(m, seed + k)
    m.eval()
  if exact_posterior:  # log-variance rows of quant_conv at diffusers' clamp: std exp(-15), sample = mean
    with torch.no_grad():
      c = VAE_CFG["latent_channels"]
      vae.quant_conv.weight[c:] = 0.0
      vae.quant_conv.bias[c:] = -60.0
  cls = diffusers.StableDiffusionInpaintPipeline if in_channels == 9 else diffusers.StableDiffusionPipeline
  pipe = cls(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
             scheduler=diffusers.DDIMScheduler(**SCHED_CFG), safety_checker=None, feature_extractor=None,
             requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(str(root / name))
  return pipe, root / name


@pytest.fixture(scope="module")
def libs():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  transformers = pytest.importorskip("transformers")
  return torch, diffusers, transformers


def _images_and_masks():
  rs = np.random.RandomState(0)
  images = rs.uniform(0, 1, (2, SIDE, SIDE, 3)).astype(np.float32)
  masks = np.zeros((2, SIDE, SIDE), np.float32)
  masks[0, 3:12, 5:14] = 1.0             # not aligned with the 2 x 2 latent cells
  masks[0, 3:12, 5] = 0.5                # binarised to 1 (>= 0.5) by both
  masks[0, 11, 5:14] = 0.3               # binarised to 0
  masks[1, 0:7, 2:9] = 0.7
  masks[1, 9:, 9:] = 1.0
  return images, masks


def _pack(z):
  """(B, h, w, 4) latents -> (B, 2h, 2w, 1) (2 x 2 depth-to-space), to ride along the decoded image."""
  b, h, w, _ = z.shape
  return z.reshape(b, h, w, 2, 2).transpose(0, 1, 3, 2, 4).reshape(b, 2 * h, 2 * w, 1)


def _unpack(p):
  b, hh, ww, _ = p.shape
  return p.reshape(b, hh // 2, 2, ww // 2, 2).transpose(0, 1, 3, 2, 4).reshape(b, hh // 2, ww // 2, 4)


LATENT_RANGE = 64.0  # packed latents are divided by this so that the final clip to [0, 1] keeps them


def test_inpainting_call_matches_diffusers(libs, tmp_path):
  torch, diffusers, transformers = libs
  ref_pipe, path = _pipeline(tmp_path, "inpaint", 9, 10, torch, diffusers, transformers, exact_posterior=True)
  images, masks = _images_and_masks()
  guidance, steps = 4.0, 3

  pipe = loading.load_pipeline(path)
  assert pipe.is_inpaint
  fns = ps.pipeline_fns(pipe)
  rng = jax.random.key(5)
  noise = np.asarray(noise_program((SIDE // 2, SIDE // 2, 4), None)(rng, jnp.arange(2, dtype=jnp.int32)))

  def decode_with_latents(params, z):  # the decoded image plus the final latents in a 4th channel
    return jnp.concatenate([fns.decode(params, z), _pack(z) / LATENT_RANGE], axis=-1)

  out = np.asarray(sampling.inpaint_channels(
      fns.denoise, schedulers.make_schedule(pipe.scheduler_config), images=images, masks=masks,
      context=ps.encode_prompts(pipe, PROMPTS), uncond_context=ps.empty_context(pipe), guidance_scale=guidance,
      num_steps=steps, rng=rng, sampler="ddim", eta=0.0, params=fns.params, encode_fn=fns.encode,
      decode_fn=decode_with_latents, keep_known=False))
  ours_img = out[..., :3]
  assert 0.0 < out[..., 3].min() and out[..., 3].max() < 1.0   # the packed latents were not clipped
  ours_lat = _unpack((out[..., 3:] * 2.0 - 1.0) * LATENT_RANGE)

  final = {}

  def keep_latents(p, i, t, kw):
    final["latents"] = kw["latents"].detach().numpy().transpose(0, 2, 3, 1)
    return {}

  with torch.no_grad():
    ref_img = ref_pipe(prompt=PROMPTS, image=images, mask_image=masks[..., None], height=SIDE, width=SIDE,
                       strength=1.0, num_inference_steps=steps, guidance_scale=guidance, eta=0.0,
                       latents=torch.from_numpy(noise.transpose(0, 3, 1, 2).copy()),
                       generator=torch.Generator().manual_seed(0), output_type="np",
                       callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"]).images
  assert ref_pipe.scheduler.init_noise_sigma == 1.0
  np.testing.assert_array_equal(ref_pipe.scheduler.timesteps.numpy(), schedulers.ddim_timesteps(
      schedulers.make_schedule(pipe.scheduler_config), steps))

  assert ref_img.shape == ours_img.shape == (2, SIDE, SIDE, 3)
  assert 0.05 < ref_img.std() and 0.02 < ref_img.mean() < 0.98   # not a saturated image
  lat_diff = np.abs(ours_lat - final["latents"]).max()
  img_diff = np.abs(ours_img - ref_img).max()
  print(f"inpainting: max |diff| images {img_diff:.2e}, latents {lat_diff:.2e} (latents up to "
        f"{np.abs(final['latents']).max():.2f})")
  # float32 through 3 guided steps (x4 on the guidance difference) and the decoder gives ~2e-5 on latents of
  # magnitude ~10 (the packing itself rounds them to ~1e-5) and ~2e-6 on the images; a mask that differs
  # in one pixel column already moves them by 0.5 and 5e-2.
  assert lat_diff < 1e-3, lat_diff
  assert img_diff < 1e-4, img_diff


def test_textual_inversion_loss_and_token_gradient_match_torch(libs, tmp_path):
  torch, diffusers, transformers = libs
  ref_pipe, path = _pipeline(tmp_path, "base", 4, 20, torch, diffusers, transformers)
  vector = np.random.RandomState(1).randn(CLIP_CFG["hidden_size"]).astype(np.float32) * 0.2
  prompts = [DEFAULT_TEMPLATES[0].format(token=PLACEHOLDER, noun="bird"),
             DEFAULT_TEMPLATES[4].format(token=PLACEHOLDER, noun="bird")]
  pixels = np.random.RandomState(2).randint(0, 256, (2, SIDE, SIDE, 3)).astype(np.uint8)

  # spurjax: the loss textual inversion trains on, and its gradient on the text encoder's params.
  pipe, (token_id,) = add_tokens(loading.load_pipeline(path), [PLACEHOLDER], [vector])
  model = objective.Model.from_pipeline(pipe)
  params = objective.pipeline_params(pipe)
  ids = tok_lib.encode(pipe.tokenizer, prompts)
  assert (ids == token_id).sum(axis=1).tolist() == [1, 1]
  rng = jax.random.key(7)

  def loss_of_text(text, frozen):
    return objective.diffusion_loss(model, {**frozen, "text": text}, jnp.asarray(pixels), jnp.asarray(ids), rng)

  frozen = {k: v for k, v in params.items() if k != "text"}
  loss, grads = jax.jit(jax.value_and_grad(loss_of_text))(params["text"], frozen)
  grad_row = np.asarray(grads["embeddings"]["token_embedding"]["embedding"])[token_id]

  @jax.jit
  def draws(rng):  # what `diffusion_loss` draws from its rng: posterior sample, timesteps, noise
    k_vae, k_t, k_noise, _, _ = jax.random.split(rng, 5)
    shape = (2, SIDE // 2, SIDE // 2, 4)
    return (jax.random.normal(k_vae, shape, jnp.float32), schedulers.random_timesteps(model.sched, k_t, 2),
            jax.random.normal(k_noise, shape, jnp.float32))

  eps, t, noise = (np.array(a) for a in draws(rng))
  eps, noise = eps.transpose(0, 3, 1, 2).copy(), noise.transpose(0, 3, 1, 2).copy()

  # torch: diffusers' textual-inversion training loss on the same weights, token row and draws.
  tokenizer, text, vae, unet = ref_pipe.tokenizer, ref_pipe.text_encoder, ref_pipe.vae, ref_pipe.unet
  assert tokenizer.add_tokens(PLACEHOLDER) == 1 and tokenizer.convert_tokens_to_ids(PLACEHOLDER) == token_id
  text.resize_token_embeddings(len(tokenizer), mean_resizing=False)
  vae.requires_grad_(False)
  unet.requires_grad_(False)
  table = text.get_input_embeddings().weight
  with torch.no_grad():
    table[token_id] = torch.from_numpy(vector)
  input_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
  np.testing.assert_array_equal(input_ids.numpy(), ids)
  sched = diffusers.DDPMScheduler.from_config(ref_pipe.scheduler.config)
  pixel_values = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
  with torch.no_grad():
    dist = vae.encode(pixel_values).latent_dist
    latents = (dist.mean + dist.std * torch.from_numpy(eps)) * vae.config.scaling_factor
  timesteps = torch.from_numpy(t.astype(np.int64))
  noisy = sched.add_noise(latents, torch.from_numpy(noise), timesteps)
  text.zero_grad()
  hidden = text(input_ids)[0]
  pred = unet(noisy, timesteps, hidden).sample
  ref_loss = torch.nn.functional.mse_loss(pred.float(), torch.from_numpy(noise).float(), reduction="mean")
  ref_loss.backward()
  ref_loss = ref_loss.item()
  ref_row = table.grad[token_id].numpy()

  assert abs(float(loss) - ref_loss) < 1e-5 * max(1.0, ref_loss), (float(loss), ref_loss)
  assert np.linalg.norm(ref_row) > 0
  rel = np.linalg.norm(grad_row - ref_row) / np.linalg.norm(ref_row)
  print(f"textual inversion: loss {float(loss):.6f} vs {ref_loss:.6f}, token-row gradient relative "
        f"error {rel:.2e}, max |diff| {np.abs(grad_row - ref_row).max():.2e}, t={t.tolist()}")
  assert rel < 1e-4, rel
