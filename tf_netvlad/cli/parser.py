"""The `tf_netvlad` argument parser (no TensorFlow import: `tf_netvlad --help` stays fast).

Handlers are in `tf_netvlad.cli.commands`; the entry point `main` is in `tf_netvlad.cli.main`. The
`train` subcommand gets one flag per `TrainConfig` field, built only when `train` is run (that
needs TensorFlow).
"""

import argparse
import sys

from tf_netvlad.cli import commands as commands
from tf_netvlad.defaults import BACKBONE_NAMES, NUM_CLUSTERS



# Help for every TrainConfig field; the defaults shown come from the recipes themselves.
TRAIN_HELP = {
    "backbone": "backbone name", "weights": "backbone weights: none, imagenet or a file",
    "trainable_from": "first trainable backbone layer ('default': conv5_1 on VGG16; 'none': all)",
    "num_clusters": "NetVLAD clusters K", "variant": "NetVLAD variant v1 | v2",
    "margin": "ranking-loss margin m (squared distances)",
    "init_images": "database images sampled for the k-means init",
    "init_per_image": "local features per image for the k-means init",
    "image_size": "training image size HxW", "batch_size": "tuples per step",
    "num_positives": "positive-set size P (best positive = min in the graph)",
    "num_negatives": "mined negatives N per query", "negative_pool_size": "random negatives per query",
    "exclude_very_hard": "semi-hard mining: skip negatives nearer than the best positive (MATLAB excludeVeryHard)",
    "keep_factor": "hardest N*keep_factor candidates are checked for margin violation",
    "cache_refresh_queries": "queries per descriptor-cache refresh (= one Keras epoch)",
    "refresh_slowdown": "MATLAB schedule: also refresh at every pass end, cycles x 1/lr-decay-factor "
                        "at every LR drop",
    "cache_batch_size": "images per batch when caching descriptors",
    "epochs": "refresh cycles to train", "optimizer": "sgd | adam", "lr": "learning rate",
    "momentum": "SGD momentum", "weight_decay": "L2 weight decay",
    "lr_decay_every": "multiply the LR by --lr-decay-factor every this many passes over the queries",
    "lr_decay_factor": "LR multiplier at each decay", "loss_reduction": "sum | mean_violating",
    "mixed_precision": "mixed_float16 (NetVLAD, whitening and the loss stay float32)",
    "recall_ns": "validation recall@N values (must include 5)",
    "val_max_queries": "validation queries per epoch (MATLAB nTestSample)",
    "checkpoint_every_steps": "also checkpoint every this many steps (0: epoch ends only)",
    "time_limit_s": "stop cleanly after this many seconds", "on_bad_image": "stop | skip",
    "whiten": "fit PCA-whitening with this many dims on the best model at the end",
    "whiten_max_images": "database images used for the whitening fit", "seed": "random seed",
    "deterministic": "TensorFlow op determinism (slower)",
}


def _add_train_flags(parser):
    """One flag per TrainConfig field, typed from the paper-recipe default (needs TensorFlow)."""
    import dataclasses

    from tf_netvlad.training import train
    from tf_netvlad.training.config import CPU_RECIPE

    paper, cpu = train.TrainConfig(), dict(CPU_RECIPE)
    for field in dataclasses.fields(train.TrainConfig):
        name, default = field.name, getattr(paper, field.name)
        flag = "--" + name.replace("_", "-")
        text = f"{TRAIN_HELP.get(name, name)} (paper: {default}"
        text += f"; cpu: {cpu[name]})" if name in cpu else ")"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            parser.add_argument(flag, dest=name, type=type(default), default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=text)


def _add_data_flags(parser, dataset_help):
    parser.add_argument("--dataset", required=True, help=dataset_help)
    parser.add_argument("--root", default=None,
                        help="image root the dataset's relative paths are joined to "
                             "(default: the dataset file's folder)")
    parser.add_argument("--image-size", default="keep",
                        help="resize policy: 'keep' (full resolution, as MATLAB), a max side '640', "
                             "or a fixed 'HxW' like '480x640'")
    parser.add_argument("--batch-size", type=int, default=8, help="images per extraction batch")
    parser.add_argument("--seed", type=int, default=43, help="random seed (sampling, k-means)")


def _add_model_flags(parser):
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, help="backbone name")
    parser.add_argument("--weights", default="none",
                        help="backbone weights: none, imagenet (keras.applications download) or a file")
    parser.add_argument("--num-clusters", type=int, default=NUM_CLUSTERS, help="NetVLAD clusters K")


def build_parser(argv=None):
    """The `tf_netvlad` argument parser; the train flags are added only when `argv` runs train."""
    parser = argparse.ArgumentParser(
        prog="tf_netvlad", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="NetVLAD place recognition with Keras 3 / TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, handler, help_text):
        sub = subparsers.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.set_defaults(func=handler)
        return sub

    _add_demo_and_train(add, sys.argv[1:] if argv is None else argv)
    _add_data_and_init(add)
    _add_evaluate_map(add)
    _add_evaluate(add)
    _add_whitening_and_export(add)
    _add_index_and_localize(add)
    _add_convert(add)
    return parser


def _add_demo_and_train(add, argv):
    """The main job and training."""
    p = add("demo", commands.cmd_demo, "The main job: demo data, k-means init, train (bounded time), evaluate, "
            "export; prints a before/after recall@N table.")
    p.add_argument("--data", default="demo_data", help="demo dataset folder (generated if absent)")
    p.add_argument("--run-dir", default="runs/demo", help="training run folder")
    p.add_argument("--saved-model", default="saved_models/tiny_netvlad_demo",
                   help="SavedModel base directory (the next version is written)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time limit")
    p.add_argument("--epochs", type=int, help="refresh cycles (default: the CPU recipe's)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset scale")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --run-dir")

    p = add("train", commands.cmd_train, "Weakly supervised training with hard-negative mining.")
    p.add_argument("--dataset", required=True, help="training split (.mat, CSV or @-folder)")
    p.add_argument("--val", help="validation split: recall@N each epoch, best model by recall@5")
    p.add_argument("--root", help="image root of the training split (default: its folder)")
    p.add_argument("--val-root", help="image root of the validation split")
    p.add_argument("--out", required=True, help="run directory (init.keras, best.keras, logs, last/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--recipe", choices=("cpu", "paper"), default="cpu",
                   help="base recipe; every flag below overrides one of its numbers")
    p.add_argument("--multi-worker", action="store_true",
                   help="train with MultiWorkerMirroredStrategy over the TF_CONFIG cluster: run the "
                        "same command on every worker; --batch-size is the global batch "
                        "(docs/multi-worker.md)")
    p.add_argument("--communication", choices=("auto", "ring", "nccl"), default="auto",
                   help="--multi-worker collectives: ring (gRPC, CPU/GPU), nccl (NVIDIA GPUs) or auto")
    if "train" in [a for a in argv if not a.startswith("-")][:1]:
        _add_train_flags(p)
    else:
        p.epilog = "Run `tf_netvlad train --help` for the flag of every recipe number."


def _add_data_and_init(add):
    """Demo data and the k-means-initialised model."""
    p = add("demo-data", commands.cmd_demo_data, "Generate the small street-like demo dataset.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies street lengths and query counts (e.g. 0.1 for a quick test)")
    p.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                   help="image height and width in pixels")

    p = add("init", commands.cmd_init, "Build a model and initialise NetVLAD by k-means on database images.")
    _add_data_flags(p, "dbStruct .mat, CSV manifest or @-named image folder")
    _add_model_flags(p)
    p.set_defaults(backbone="vgg16")
    p.add_argument("--variant", choices=("v1", "v2"), default="v1",
                   help="v1: official models (w = a*c_hat); v2: the paper (w = 2a*c, b = -a|c|^2)")
    p.add_argument("--num-images", type=int, default=500, help="database images sampled for k-means")
    p.add_argument("--per-image", type=int, default=100, help="local features sampled per image")
    p.add_argument("--niter", type=int, default=100, help="k-means iterations")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_evaluate_map(add):
    """Oxford/Paris mAP."""
    p = add("evaluate-map", commands.cmd_evaluate_map,
            "Oxford5k/Paris6k-style mAP with ok/junk lists (revisited easy/medium/hard or original).")
    p.add_argument("--model", required=True, help="a tf_netvlad .keras model")
    p.add_argument("--gt", required=True,
                   help="revisited gnd_*.pkl, or a folder of original *_good/_ok/_junk/_query.txt files")
    p.add_argument("--images", required=True, help="folder of the database and query images")
    p.add_argument("--ext", default=".jpg", help="image file extension")
    p.add_argument("--image-size", default="keep", help="resize policy: keep, max side, or HxW")
    p.add_argument("--batch-size", type=int, default=8, help="images per extraction batch")
    p.add_argument("--no-crop", action="store_true", help="use whole query images, not their boxes")
    p.add_argument("--box-margin", type=float, default=0.0,
                   help="pixels added to each side of a query box (MATLAB VGG16 conv5_3: 98)")
    p.add_argument("--query-resize", choices=("crop", "image"), default="crop",
                   help="resize the crop (revisited code) or the whole image before cropping")
    p.add_argument("--top-k", type=int, default=None,
                   help="rank only the top K database images (default: the whole database)")
    p.add_argument("--on-missing", choices=("raise", "drop"), default="raise",
                   help="text ground truth: stop at, or drop, names missing from --images")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG of per-query AP histograms here")
    p.add_argument("--retrievals", help="write a PNG grid of queries and their top images here")


def _add_evaluate(add):
    """recall@N."""
    p = add("evaluate", commands.cmd_evaluate,
            "recall@N of a model (or of an off-the-shelf k-means-initialised backbone) on a dataset.")
    _add_data_flags(p, "dbStruct .mat, CSV manifest or @-named image folder")
    p.add_argument("--model", help="a tf_netvlad .keras model")
    _add_model_flags(p)
    p.add_argument("--recall-ns", default="default",
                   help="N values: 'default' (1,5,10,20), 'reference' (1-5, 10-100 step 5) or a list")
    p.add_argument("--json", help="write results as JSON here")
    p.add_argument("--plot", help="write a recall@N curve PNG here")
    p.add_argument("--retrievals", help="write a PNG grid of queries and their top-5 retrievals here")
    p.add_argument("--protocol", choices=("auto", "pitts", "tokyo247", "tokyotm"), default="auto",
                   help="auto: Tokyo 24/7 if the dataset name contains tokyo247 (panorama NMS over 12 "
                        "cutouts, day/sunset/night recall, queries at most 640 px), TokyoTM if it has "
                        "time stamps (same-time db images dropped), else Pittsburgh")
    p.add_argument("--query-image-size", default="auto",
                   help="resize policy of the queries: 'auto' (= --image-size; max side 640 for "
                        "tokyo247) or a policy as --image-size")
    p.add_argument("--approx-index", nargs="?", const="auto", default=None, metavar="FACTORY",
                   help="also report recall with an approximate faiss index: a factory string such "
                        "as 'IVF1024,PQ64', or no value for IVF(~4 sqrt n),PQ(D/16, <= 256)")
    p.add_argument("--approx-train-size", type=int, default=None,
                   help="training vectors of the approximate index; None: 40 per IVF cell")
    p.add_argument("--approx-nprobe", type=int, default=None,
                   help="IVF cells visited per query; None: nlist/16, at least 8")
    p.add_argument("--descriptor-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the database descriptors held during evaluation")
    p.add_argument("--memmap-dir", default=None,
                   help="keep the database descriptors in a temporary .npy memmap in this folder "
                        "(removed afterwards) instead of RAM")
    p.add_argument("--strict", action="store_true",
                   help="stop at an unreadable image (default: leave it out, count and list it)")


def _add_whitening_and_export(add):
    """PCA-whitening and export."""
    p = add("fit-whitening", commands.cmd_fit_whitening,
            "Fit PCA-whitening on database descriptors and append it to a model.")
    _add_data_flags(p, "dataset whose database images are used (the training split, as the paper)")
    p.add_argument("--model", required=True, help="input .keras model")
    p.add_argument("--dim", type=int, default=256, help="whitened output dimension")
    p.add_argument("--max-images", type=int, default=10_000, help="at most this many database images")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    p = add("export", commands.cmd_export,
            "Export a .keras model as a versioned SavedModel for TensorFlow Serving and/or ONNX.")
    p.add_argument("--model", required=True, help="a tf_netvlad .keras model")
    p.add_argument("--saved-model", help="base directory; the export goes to <DIR>/<version>/")
    p.add_argument("--version", type=int, help="version number (default: next free integer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version / ONNX file")
    p.add_argument("--image-size", default="480x640",
                   help="resize policy of the serve_bytes signature: 'HxW', a max side, or 'keep'")
    p.add_argument("--dim", type=int, help="keep the first DIM whitened outputs (+ re-L2)")
    p.add_argument("--model-name", help="model name in models.config and warmup requests "
                   "(default: the directory name)")
    p.add_argument("--no-warmup", action="store_true", help="do not write the warmup requests")
    p.add_argument("--onnx", help="also write an ONNX file (float image input) here")


def _add_index_and_localize(add):
    """The on-disk index and localisation."""
    p = add("index", commands.cmd_index, "Index database images for search: streaming, resumable extraction "
            "and a faiss index with paths and positions.")
    p.add_argument("--model", required=True, help="a tf_netvlad .keras model")
    p.add_argument("--dataset", help="database images of a split (.mat, CSV or @-folder)")
    p.add_argument("--images", help="a folder of images (positions from @-file names when present)")
    p.add_argument("--root", help="image root of the dataset (default: its folder)")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--kind", default="flat",
                   help="flat (exact inner product), ivfpq, hnsw or a faiss factory string")
    p.add_argument("--float16", action="store_true", help="store descriptors as float16")
    p.add_argument("--image-size", help="resize policy (default keep); with --add the index's is used")
    p.add_argument("--batch-size", type=int, default=8, help="images per extraction batch")
    p.add_argument("--chunk-size", type=int, default=256, help="images per on-disk chunk (resume unit)")
    p.add_argument("--strict", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted build and start over")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument("--add", action="store_true", help="add the images to an existing index")

    p = add("localize", commands.cmd_localize, "Localise photos: top-N database images, scores, positions "
            "and an estimated position.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--index", required=True, help="index directory from `tf_netvlad index`")
    p.add_argument("--model", required=True, help="the .keras model the index was built with")
    p.add_argument("--top-k", type=int, default=5, help="retrieved database images per query")
    p.add_argument("--image-size", help="resize policy (default: the index's)")
    p.add_argument("--gt-dataset", help="split with the queries' true positions (marks results correct)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG grid of queries and retrievals here")
    p.add_argument("--strict", action="store_true",
                   help="stop at an unreadable query image or one missing from --gt-dataset (default: "
                        "report it, localise the rest; exit 1 if an image was unreadable)")


def _add_convert(add):
    """Weight converters."""
    p = add("convert", commands.cmd_convert, "Convert official MatConvNet or PyTorch NetVLAD weights.")
    p.add_argument("--matconvnet", help="struct-form MatConvNet .mat (e.g. Pitts30K_struct.mat)")
    p.add_argument("--pytorch", help="pytorch-NetVlad / Patch-NetVLAD checkpoint (.pth.tar)")
    p.add_argument("--arch", choices=("vgg16", "alexnet"), help="encoder of a PyTorch checkpoint "
                   "(default: detected from its keys)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="load the checkpoint with torch's full pickle loader (only for trusted files)")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
