"""Parity with diffusers at Stable Diffusion 2's structure, at reduced width: 4 levels, two layers per
block, diffusers' SD-2 head counts (`attention_head_dim` (5, 10, 20, 20), read as heads), linear
projections, the 9-channel inpainting UNet (the 4-channel input is the toy parity tests')."""
import numpy as np
import pytest

from spurjax.diffusion import unet as unet_lib
from test_unet import _randomise

# stabilityai/stable-diffusion-2-base unet/config.json with widths / 8 and a smaller text width.
SD2_SHAPE = dict(block_out_channels=(40, 80, 160, 160), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=64, use_linear_projection=True, norm_num_groups=8, out_channels=4,
                 sample_size=8, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, center_input_sample=False,
                 downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5, upcast_attention=False)

pytestmark = pytest.mark.slow


def test_unet_parity_at_sd2_inpainting_structure(in_channels=9):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  tm = diffusers.UNet2DConditionModel(**SD2_SHAPE, in_channels=in_channels).eval()
  _randomise(tm)
  config = dict(tm.config)
  heads = [blk.attentions[0].transformer_blocks[0].attn1.heads for blk in tm.down_blocks if hasattr(blk, "attentions")]
  assert heads == [5, 10, 20]   # diffusers reads SD-2's attention_head_dim as head counts (head width 8 here)
  rs = np.random.RandomState(1)
  x = rs.randn(2, in_channels, 8, 8).astype(np.float32)
  ctx = rs.randn(2, 77, 64).astype(np.float32)
  t = np.array([1, 981], np.int64)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy().transpose(0, 2, 3, 1)
  sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
  params = unet_lib.unet_from_diffusers(sd, config)
  model = unet_lib.UNet2DConditionModel(config)
  out = np.asarray(model.apply({"params": params}, x.transpose(0, 2, 3, 1), t, ctx))
  assert out.shape == (2, 8, 8, 4)
  rel = float(np.abs(out - ref).max() / np.abs(ref).max())
  assert rel < 1e-4, rel
  counted = unet_lib.count_params(params)
  assert counted == sum(p.numel() for p in tm.parameters()), counted
