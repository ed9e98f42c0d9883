"""A small inpainting prior for the built-in benchmark (`spurjax prior train`).

Pixel space at 32 px (the 64-px corpus is box-downsampled), in the SD-2-inpainting input layout,
so one model inpaints, draws from text alone and serves textual inversion. The measurements behind
these settings are in docs/experiments.md ("configs/prior_synth.py") and spurjax/assets/prior/README.md.
`:deep` adds a fourth level; `:tiny` is a seconds-long test variant.
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resolution = 32               # small enough to train on a CPU in under an hour
  c.inpaint = True                # UNet input [noisy image, mask, masked image] (SD-2-inpainting layout)

  # Training masks, weight of each kind (normalised); squares and other aspects keep the mask's
  # shape from telling the class.
  c.masks = ml_collections.ConfigDict()
  c.masks.full = 0.15             # whole image: text-to-image and textual inversion
  c.masks.box = 0.15              # the object's box grown by `grow` px
  c.masks.square = 0.35           # the square around it (the region DDB repainted when this prior was made)
  c.masks.aspect = 0.15           # a box around it of aspect ratio in [1/max_aspect, max_aspect]
  c.masks.random = 0.20           # a random box, sides random_side x the image
  c.masks.grow = (1, 3)
  c.masks.max_aspect = 2.0
  c.masks.random_side = (0.25, 0.75)

  c.text = ml_collections.ConfigDict()
  c.text.vocab_size = 8000        # the first 8000 CLIP BPE entries: bird, flower, land, water and colours are single tokens
  c.text.max_length = 16          # tokens per prompt (BOS + words + EOS + padding)
  c.text.hidden_size = 64
  c.text.intermediate_size = 128
  c.text.num_hidden_layers = 2
  c.text.num_attention_heads = 2
  c.text.train = True             # train jointly with the UNet (False: random frozen CLIP)

  c.unet = ml_collections.ConfigDict()
  # Narrow outer levels, cross-attention only at 8 px and the middle block: a third of the step time
  # of wider levels with attention at 16 px too.
  c.unet.block_out_channels = (16, 32, 64)
  c.unet.layers_per_block = 1
  c.unet.down_block_types = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
  c.unet.up_block_types = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
  c.unet.attention_heads = (2, 2, 2)
  c.unet.norm_num_groups = 8
  # The pooled prompt (attention pooling, this many heads; 0: off) added to the time embedding
  # (diffusers' addition_embed_type "text"): every block sees the prompt; it made inpainting better.
  c.unet.text_time_heads = 4

  c.scheduler = ml_collections.ConfigDict()
  c.scheduler.num_train_timesteps = 1000
  c.scheduler.beta_schedule = "squaredcos_cap_v2"   # cosine betas
  c.scheduler.beta_start = 0.0001
  c.scheduler.beta_end = 0.02
  c.scheduler.prediction_type = "v_prediction"
  c.scheduler.clip_sample = True   # pixel space: clip the x0 estimate to [-1, 1] while sampling
  c.scheduler.timestep_spacing = "trailing"

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3000            # optimizer steps: under an hour on a 2-core CPU
  c.train.batch_size = 64
  c.train.grad_accum = 1
  c.train.lr = 1e-3
  c.train.lr_schedule = "constant"   # or cosine (to end_lr_frac x lr): one cosine run came out much worse
  c.train.end_lr_frac = 0.0
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.clip_norm = 1.0
  c.train.ema_decay = 0.998       # a short run: the EMA should not reach back to its first half
  c.train.cond_drop = 0.1         # caption dropout, for classifier-free guidance
  # Loss weights, all off (plain MSE): each one tried made the inpaintings or DDB no better.
  c.train.mask_weight = 1.0       # weight inside the training mask
  c.train.object_weight = 1.0     # weight on the object's pixels (the corpus object masks)
  c.train.object_t_max = 1.0      # object_weight only below this fraction of the timesteps
  c.train.min_snr_gamma = 0.0     # > 0: min-SNR-gamma weighting
  c.train.flip = True
  c.train.ckpt_every = 100
  c.train.log_every = 25

  if arg == "deep":
    # A fourth level (128 channels at 4 px) and cross-attention at 8 and 4 px: 4 times the parameters.
    c.unet.block_out_channels = (16, 32, 64, 128)
    c.unet.down_block_types = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    c.unet.up_block_types = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    c.unet.attention_heads = (2, 2, 2, 4)
  elif arg == "tiny":
    c.resolution = 16
    c.text.vocab_size = 1000
    c.text.hidden_size = 16
    c.text.intermediate_size = 32
    c.text.num_hidden_layers = 1
    c.text.num_attention_heads = 2
    c.unet.block_out_channels = (8, 16)
    c.unet.down_block_types = ("DownBlock2D", "CrossAttnDownBlock2D")
    c.unet.up_block_types = ("CrossAttnUpBlock2D", "UpBlock2D")
    c.unet.attention_heads = (2, 2)
    c.unet.norm_num_groups = 4
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.warmup_steps = 0
    c.train.ckpt_every = 2
    c.train.log_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use 'deep', 'tiny' or nothing)")
  return c
