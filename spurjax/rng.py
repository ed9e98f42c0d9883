"""Named random streams. Every seeded host-side draw in spurjax is `np.random.default_rng([seed,
STREAM, ...])` (or `fold_in(key, STREAM)` on the device) with one of these ids, so no two uses of
one seed share a stream by accident and changing one use leaves the others as they were."""

DDIM_ETA = 1          # diffusion sampling: the eta (stochastic) noise of each example
PRIOR_FLIP = 1        # prior training: horizontal flips of batch i
INVERT_TEMPLATE = 2   # textual inversion: the prompt template of each example at step i
INVERT_FLIP = 3       # textual inversion: the horizontal flip of each example at step i (per class)
DIFFEDIT = 5          # DiffEdit masks: the noise draws of chunk c
EPOCH_ORDER = 7       # classifier training: the example order of an epoch
AUGMENT = 11          # classifier training: the random crop / flip of one example in one epoch
SUBSAMPLE = 101       # baselines: SUBY / SUBG subsampling
UPSAMPLE = 103        # baselines: group upsampling (GroupDRO's balanced batches)
DFR_SUBSAMPLE = 202   # DFR: the group-balanced subsamples of the validation set
BLOBS = 0xB10B        # bench prior's strict judge: the blob images and noisy objects made from one seed
INPAINT_ATTRIBUTE = 0xA77  # inpaint: which of ddb.inpaint.attributes an edit's prompt names
PASTE_DONOR = 0x9a57e   # paste generator: the donor object and its flip
