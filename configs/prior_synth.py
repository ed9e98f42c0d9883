"""A small inpainting prior for the built-in benchmark (`spurjax prior train`).

Pixel space at 32 px (the 64-px corpus is box-downsampled). The UNet takes the SD-2-inpainting
input [noisy image, mask, masked image] (3 + 1 + 3 channels); training masks mix the whole
image (text-to-image, textual inversion), the object's grown box, the square around it, boxes
of other aspect ratios around it and random boxes. 3 levels (16, 32, 64 channels) with
cross-attention at 8 px and the pooled prompt added to the time embedding, v-prediction, cosine schedule; a 2-layer CLIP text encoder over the
first 8000 entries of the CLIP BPE vocabulary (bird, flower, land, water, photo and the colour
words are single tokens). `:tiny` is a seconds-long test variant.
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resolution = 32
  c.inpaint = True                # UNet input [noisy image, mask, masked image] (SD-2-inpainting layout)

  # Training masks: weights of each kind (normalised). full = text-to-image / textual inversion;
  # box = object box grown by `grow` px; square = the square around it; aspect = a box around it
  # of aspect ratio in [1/max_aspect, max_aspect]; random = a random box (sides random_side x size).
  c.masks = ml_collections.ConfigDict()
  c.masks.full = 0.15
  c.masks.box = 0.15
  c.masks.square = 0.35
  c.masks.aspect = 0.15
  c.masks.random = 0.20
  c.masks.grow = (1, 3)
  c.masks.max_aspect = 2.0
  c.masks.random_side = (0.25, 0.75)

  c.text = ml_collections.ConfigDict()
  c.text.vocab_size = 8000
  c.text.max_length = 16          # tokens per prompt (BOS + words + EOS + padding)
  c.text.hidden_size = 64
  c.text.intermediate_size = 128
  c.text.num_hidden_layers = 2
  c.text.num_attention_heads = 2
  c.text.train = True             # train jointly with the UNet (False: random frozen CLIP)

  c.unet = ml_collections.ConfigDict()
  # Narrow outer levels and cross-attention only at 8 px (and the middle block): on the CPU this
  # runs a batch of 64 in 1.55 s against 4.6 s for (32, 64, 64) with attention at 16 and 8 px.
  c.unet.block_out_channels = (16, 32, 64)
  c.unet.layers_per_block = 1
  c.unet.down_block_types = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
  c.unet.up_block_types = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
  c.unet.attention_heads = (2, 2, 2)
  c.unet.norm_num_groups = 8
  # > 0: the pooled prompt (attention pooling with this many heads) is added to the time embedding
  # (diffusers' addition_embed_type "text"), so every block sees the prompt, not only the
  # cross-attention layers at 8 px. 0: cross-attention only. The shipped prior (4 heads, 3000 steps)
  # is judged the prompted class in 94 % of text-to-image samples and 88 % of other-class inpaintings
  # by `bench prior`'s strict judge, against 64 % / 49 % for the earlier cross-attention-only prior
  # (1800 steps, half the corpus). At equal steps (3000, same corpus), cross-attention only: 94 %
  # text-to-image, 79-81 % other-class and 80 % same-class inpaintings (assets/prior/README.md).
  c.unet.text_time_heads = 4

  c.scheduler = ml_collections.ConfigDict()
  c.scheduler.num_train_timesteps = 1000
  c.scheduler.beta_schedule = "squaredcos_cap_v2"
  c.scheduler.beta_start = 0.0001
  c.scheduler.beta_end = 0.02
  c.scheduler.prediction_type = "v_prediction"
  c.scheduler.clip_sample = True   # pixel space: clip the x0 estimate to [-1, 1] while sampling
  c.scheduler.timestep_spacing = "trailing"

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3000            # optimizer steps (53 minutes on an idle 2-core CPU, 60 images/s)
  c.train.batch_size = 64
  c.train.grad_accum = 1
  c.train.lr = 1e-3
  # constant | cosine (decay to end_lr_frac x lr at the last step). Cosine alone, one run: strict
  # judge text-to-image 0.48 and other-class inpainting 0.49 against 0.94 / 0.88 (assets README).
  c.train.lr_schedule = "constant"
  c.train.end_lr_frac = 0.0
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.clip_norm = 1.0
  c.train.ema_decay = 0.998       # a short run: the EMA should not reach back to its first half
  c.train.cond_drop = 0.1         # caption dropout, for classifier-free guidance
  # Loss weight inside the training mask (1: plain mean). 4 (41 min): the judge calls more of DDB's edits
  # the new class (87 % against 84 %), DiffEdit IoU a little lower, DDB validation 94.2 against 95.3
  # (DDB defaults of the time, without erased backgrounds).
  c.train.mask_weight = 1.0
  # Loss weight on the object's pixels (the corpus object masks), whatever the training mask. The
  # shipped prior uses 1. Measured with 8 (and the cosine lr, 3000 steps, 47 min 44 s): text-to-image
  # objects turn single-hued, but the weighted MSE's optimum is the weight-tilted mean, so where
  # the object's place is uncertain (anywhere in a repainted square) the model paints object
  # colours over the whole region. bench prior's strict judge: text-to-image 0.92 (against 0.94),
  # other-class inpainting with the class word 0.64 (0.88), with a learned token 0.42 (0.88),
  # inpaintings judged blobs 35-56 % (8-9 %), DiffEdit IoU 0.31 (0.39). Not used.
  c.train.object_weight = 1.0
  # object_weight only below this fraction of the timesteps (1: all). Weight 4 below 0.6 (46.5 min):
  # DiffEdit IoU 0.47 (0.68), edits judged the new class 73 % (90 %), DDB val WGA 76.7 (96.0); not used.
  c.train.object_t_max = 1.0
  # > 0: min-SNR-gamma loss weighting. 5 (42 min): the strict judge calls more of DDB's edits the new
  # class (92 % against 84 %), but the ERM network also reads them as it more readily, so they teach
  # less; DDB validation 90.9 with the defaults, 95.3 with gammas (3, 3) or guidance 1.5 (a tie).
  c.train.min_snr_gamma = 0.0
  c.train.flip = True
  c.train.ckpt_every = 100
  c.train.log_every = 25

  if arg == "deep":
    # A fourth level (128 channels at 4 px) and cross-attention at 8 and 4 px: 4.1 M UNet parameters
    # for about 15 % more time per step than the 3-level (16, 32, 64).
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
