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
BACKBONE_NAMES = ("vgg16", "alexnet", "resnet50", "mobilenetv2", "tiny", "tiny_s2", "tiny_ws")

# Ranking-loss reductions over a batch (`models.losses`, `TrainConfig.loss_reduction`).
LOSS_REDUCTIONS = ("sum", "mean_violating")

# What a pipeline does with an unreadable image: extraction / evaluation / index (`on_error`)
# and training tuples (`on_bad_image`, CLI `--on-bad-image`).
ON_ERROR_CHOICES = ("raise", "skip")
ON_BAD_IMAGE_CHOICES = ("stop", "skip")

# Optimisers of the training loop (`TrainConfig.optimizer`).
OPTIMIZERS = ("sgd", "adam")

# Margin m of the triplet ranking loss on squared distances (paper: 0.1): `models.losses`,
# `NetVLADModel`, `build_model`, `TrainConfig.margin` and the tuple mining.
MARGIN = 0.1

# Random seed of every seeded step (image and feature sampling, k-means, faiss training samples,
# mining, validation subsets) when the caller gives none: MATLAB NetVLAD seeds with 43.
SEED = 43

# Images per model call when extracting descriptors: extraction, evaluation, indexing,
# localisation and the training run's caches (`TrainConfig.cache_batch_size`, CLI `--batch-size`).
EXTRACT_BATCH_SIZE = 8

# k-means initialisation of NetVLAD (MATLAB `getClusters.m`, pytorch-NetVlad): `INIT_PER_IMAGE`
# local features from each of `INIT_IMAGES` random database images (50,000 descriptors),
# clustered with `KMEANS_NITER` iterations (`models.initialization`, `models.extract`,
# `search.faiss_index.kmeans`, `TrainConfig.init_images` / `init_per_image`, CLI `init`).
INIT_IMAGES = 500
INIT_PER_IMAGE = 100
KMEANS_NITER = 100

# PCA-whitening fit (MATLAB `addPCA.m`): descriptors of at most this many random database images
# (`models.initialization.fit_whitening`, `TrainConfig.whiten_max_images`, CLI `fit-whitening`).
WHITEN_MAX_IMAGES = 10_000
# Whitened dimensions kept (`fit_whitening`, CLI `fit-whitening --dim`): the paper's 4096-D whitened
# NetVLAD. At most min(descriptor dim, images - 1); smaller models pass a smaller value (e.g. 256).
WHITEN_COMPONENTS = 4096

# (H, W) of the Pittsburgh / Tokyo images (640 x 480 landscape), the NetVLAD training resolution:
# `TrainConfig.image_size` and the `serve_bytes` resize policy of an export (CLI `export`).
PAPER_IMAGE_SIZE = (480, 640)

# Place ground truth (dbStruct `posDistThr` / `nonTrivPosDistSqThr`): a database image within
# 25 m of a query is a positive for evaluation (and a correct localisation); training positives
# are those within 10 m (squared: 100 m²). `data.places`, `data.dbstruct`, the demo data,
# `retrieval.localize`.
POS_DIST_THR_M = 25.0
NON_TRIV_POS_DIST_SQ_THR_M2 = 100.0
# MATLAB's trivial-positive rule (`dbBase.nontrivialPosQ`: `dSq > 1`): a training positive's squared
# distance to the query must exceed 1 m² (1 m), else it is the query's own panorama (TokyoTM) or a
# duplicate.
# `PlaceSplit.non_trivial_positives(exclude_trivial_m2=...)`, `TrainConfig.exclude_trivial_m2`.
TRIVIAL_POS_DIST_SQ_M2 = 1.0

# (H, W) of the generated demo images (`demo.dataset.generate_demo_data`, CLI `demo-data`); the
# CPU recipe (`training.config.CPU_RECIPE`) trains at this native size, so nothing is resized.
DEMO_IMAGE_SIZE = (96, 128)

# Images per streamed chunk of a retrieval-index build or add (the resume unit;
# `retrieval.build`, `retrieval.index`, CLI `index --chunk-size`).
INDEX_CHUNK_SIZE = 256
# Retrieved database images per query when localising (`retrieval.localize`, CLI `--top-k`).
LOCALIZE_TOP_K = 5
