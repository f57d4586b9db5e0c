"""The one home of every default and choice list that more than one level of the package uses.

Standard library only: the CLI's parsers, `TrainConfig` and the Keras layers all read these
values, so `tf_netvlad SUB --help` never imports TensorFlow to learn a default. A value used by a
single module stays in that module.
"""

# NetVLAD head (`layers.netvlad.NetVLAD`, `models.model.NetVLADModel`, `build_model`, `init_model`,
# `TrainConfig`, `--num-clusters`): K = 64 clusters, the paper's value for VGG16 (Table 1).
NUM_CLUSTERS = 64
# v1: the paper's soft-assignment (conv 1x1 + softmax); v2: decoupled assignment weights.
NETVLAD_VARIANTS = ("v1", "v2")
DEFAULT_VARIANT = "v1"

# Backbone names (`models.backbones.BACKBONES` builds them; the CLI offers them as choices).
BACKBONE_NAMES = ("vgg16", "alexnet", "resnet50", "mobilenetv2", "tiny")

# Ranking-loss reductions over a batch (`models.losses`, `TrainConfig.loss_reduction`).
LOSS_REDUCTIONS = ("sum", "mean_violating")

# What a pipeline does with an unreadable image: extraction / evaluation / index (`on_error`)
# and training tuples (`on_bad_image`, CLI `--on-bad-image`).
ON_ERROR_CHOICES = ("raise", "skip")
ON_BAD_IMAGE_CHOICES = ("stop", "skip")

# Optimisers of the training loop (`TrainConfig.optimizer`).
OPTIMIZERS = ("sgd", "adam")
