"""`tf_netvlad` command line. Each subcommand maps its flags onto one library call.

TensorFlow is imported only inside the subcommand handlers, so `tf_netvlad --help` is instant.
"""

import argparse
import logging
import os
import sys

log = logging.getLogger("tf_netvlad")

BACKBONE_NAMES = ("vgg16", "alexnet", "resnet50", "mobilenetv2", "tiny")  # = backbones.BACKBONES


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _weights(value):
    return None if value in (None, "none", "None") else value


def _recall_ns(value):
    from tf_netvlad import evaluation

    if value in (None, "default"):
        return evaluation.DEFAULT_RECALL_NS
    if value == "reference":
        return evaluation.REFERENCE_RECALL_NS
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise CommandError(f"--recall-ns must be 'default', 'reference' or e.g. '1,5,10'. Received: {value!r}")


def _image_size(value):
    from tf_netvlad import data

    return data.parse_image_size(value)


def _refuse_existing(path, overwrite):
    if path and os.path.exists(path) and not overwrite:
        raise CommandError(f"{path} already exists; pass --overwrite to replace it.")


# --------------------------------------------------------------------------- handlers


def cmd_demo_data(args):
    from tf_netvlad import demo_data

    paths = demo_data.generate_demo_data(args.out, seed=args.seed, scale=args.scale,
                                         image_size=tuple(args.image_size))
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def cmd_init(args):
    from tf_netvlad import workflows

    _refuse_existing(args.out, args.overwrite)
    split = workflows.load_split_checked(args.dataset, root=args.root)
    model, stats = workflows.init_model(
        split, root=args.root, backbone=args.backbone, weights=_weights(args.weights),
        num_clusters=args.num_clusters, variant=args.variant, image_size=_image_size(args.image_size),
        num_images=args.num_images, per_image=args.per_image, niter=args.niter, seed=args.seed,
        batch_size=args.batch_size,
    )
    workflows.save_model(model, args.out)
    print(f"k-means init: {stats['num_descriptors']} descriptors, alpha={stats['alpha']:.2f}, "
          f"top-1/top-2 assignment ratio {stats['assignment_ratio']:.1f}")
    print(f"model: {args.out}")
    return 0


def cmd_evaluate(args):
    from tf_netvlad import evaluation, workflows
    from tf_netvlad.model import load_model

    if bool(args.model) == bool(args.backbone):
        raise CommandError("Pass exactly one of --model FILE.keras or --backbone NAME.")
    ns = _recall_ns(args.recall_ns)
    split = workflows.load_split_checked(args.dataset, root=args.root)
    image_size = _image_size(args.image_size)
    if args.model:
        model = load_model(args.model, compile=False)
    else:
        model, stats = workflows.init_model(
            split, root=args.root, backbone=args.backbone, weights=_weights(args.weights),
            num_clusters=args.num_clusters, image_size=image_size, seed=args.seed,
            batch_size=args.batch_size,
        )
        log.info("off-the-shelf NetVLAD: k-means init with alpha %.2f", stats["alpha"])
    results = workflows.evaluate_model(
        model, split, root=args.root, image_size=image_size, ns=ns, batch_size=args.batch_size,
        json_path=args.json, plot_path=args.plot, retrievals_path=args.retrievals,
        protocol=args.protocol, approximate=args.approx_index,
        query_image_size=("auto" if args.query_image_size == "auto"
                          else _image_size(args.query_image_size)),
        approx_train_size=args.approx_train_size, approx_nprobe=args.approx_nprobe,
        descriptor_dtype=args.descriptor_dtype, memmap_dir=args.memmap_dir,
        on_error="raise" if args.strict else "skip",
    )
    print(evaluation.format_recall_table(results, labels=[results["model"]]))
    for entry in results.get("unreadable", []):
        print(f"unreadable {entry['kind']} image left out: {entry['path']} ({entry['reason']})",
              file=sys.stderr)
    for flag, path in (("json", args.json), ("plot", args.plot), ("retrievals", args.retrievals)):
        if path:
            print(f"{flag}: {path}")
    return 0


def cmd_evaluate_map(args):
    from tf_netvlad import retrieval_gt, retrieval_map
    from tf_netvlad.model import load_model

    gt = retrieval_gt.load_ground_truth(args.gt, images_dir=args.images, ext=args.ext,
                                        on_missing=args.on_missing)
    model = load_model(args.model, compile=False)
    results = retrieval_map.evaluate_map(
        model, gt, args.images, image_size=_image_size(args.image_size),
        crop_queries=not args.no_crop, batch_size=args.batch_size, ext=args.ext,
        box_margin=args.box_margin, query_resize=args.query_resize, k=args.top_k,
        json_path=args.json, plot_path=args.plot, retrievals_path=args.retrievals,
    )
    print(retrieval_map.format_map_table(results))
    for flag, path in (("json", args.json), ("plot", args.plot), ("retrievals", args.retrievals)):
        if path:
            print(f"{flag}: {path}")
    return 0


def cmd_fit_whitening(args):
    from tf_netvlad import workflows
    from tf_netvlad.model import load_model

    _refuse_existing(args.out, args.overwrite)
    split = workflows.load_split_checked(args.dataset, root=args.root)
    model = workflows.fit_whitening(
        load_model(args.model, compile=False), split.db_paths, root=split.root,
        image_size=_image_size(args.image_size), num_components=args.dim,
        max_images=args.max_images, seed=args.seed, batch_size=args.batch_size,
    )
    workflows.save_model(model, args.out)
    print(f"whitened model ({args.dim}-D): {args.out}")
    return 0


def cmd_export(args):
    from tf_netvlad import export

    if not (args.saved_model or args.onnx):
        raise CommandError("Pass --saved-model DIR and/or --onnx FILE.onnx.")
    if args.onnx:
        _refuse_existing(args.onnx, args.overwrite)
    if args.saved_model:
        path = export.export_saved_model(
            args.model, args.saved_model, version=args.version, overwrite=args.overwrite,
            image_size=_image_size(args.image_size), descriptor_dim=args.dim,
            model_name=args.model_name, warmup=not args.no_warmup,
        )
        print(f"SavedModel: {path}")
    if args.onnx:
        export.export_onnx(args.model, args.onnx, descriptor_dim=args.dim)
        print(f"ONNX: {args.onnx}")
    return 0


def cmd_index(args):
    from tf_netvlad import places, retrieval_index

    if bool(args.dataset) == bool(args.images):
        raise CommandError("Pass exactly one of --dataset FILE or --images DIR.")
    images = places.load_split(args.dataset, root=args.root) if args.dataset else args.images
    on_error = "raise" if args.strict else "skip"
    if args.add:
        if args.image_size is not None:
            raise CommandError("--add uses the index's own --image-size; do not pass it.")
        index = retrieval_index.RetrievalIndex.load(args.out)
        index.add(args.model, images, root=args.root, batch_size=args.batch_size,
                  chunk_size=args.chunk_size, on_error=on_error)
    else:
        index = retrieval_index.build_retrieval_index(
            args.model, args.out, images, root=args.root, image_size=_image_size(args.image_size or "keep"),
            kind=args.kind, float16=args.float16, batch_size=args.batch_size, chunk_size=args.chunk_size,
            on_error=on_error, resume=not args.restart, overwrite=args.overwrite,
        )
    print(f"index: {args.out} ({index.count} images, {index.dim}-D)")
    return 0


def cmd_localize(args):
    from tf_netvlad import localize, places

    gt = None
    if args.gt_dataset:
        gt = localize.positions_from_split(places.load_split(args.gt_dataset), args.images)
    results = localize.localize(
        args.index, args.model, args.images, k=args.top_k,
        image_size=None if args.image_size is None else _image_size(args.image_size), gt_positions=gt,
        on_error="raise" if args.strict else "skip",
    )
    print(localize.format_results(results))
    if args.json:
        localize.write_results(results, args.json)
        print(f"json: {args.json}")
    if args.plot:
        localize.plot_localization(results, args.plot)
        print(f"plot: {args.plot}")
    failed = sum("error" in r for r in results)
    if failed:
        print(f"tf_netvlad localize: {failed} of {len(results)} query images could not be read "
              "and were not localised (see above).", file=sys.stderr)
        return 1
    return 0


def cmd_convert(args):
    from tf_netvlad import convert

    if bool(args.matconvnet) == bool(args.pytorch):
        raise CommandError("Pass exactly one of --matconvnet FILE.mat or --pytorch CHECKPOINT.")
    _refuse_existing(args.out, args.overwrite)
    if args.matconvnet:
        model = convert.convert_matconvnet(args.matconvnet, out_path=args.out)
    else:
        model = convert.convert_pytorch(args.pytorch, out_path=args.out, arch=args.arch,
                                        weights_only=not args.unsafe_load)
    print(f"converted {model.backbone_name} NetVLAD (K={model.num_clusters}, "
          f"{model.descriptor_dim}-D descriptors): {args.out}")
    return 0


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


def _train_value(field, text):
    """Parses a CLI string for TrainConfig `field` (the dataclass validates the value)."""
    if field in ("weights", "trainable_from", "time_limit_s", "whiten") and text.lower() in ("none", "null"):
        return None
    if field == "recall_ns":
        return tuple(int(v) for v in text.split(","))
    if field == "image_size":
        return _image_size(text)
    if field in ("time_limit_s",):
        return float(text)
    if field in ("whiten",):
        return int(text)
    return text


def _add_train_flags(parser):
    """One flag per TrainConfig field, typed from the paper-recipe default (needs TensorFlow)."""
    import dataclasses

    from tf_netvlad import training

    paper, cpu = training.TrainConfig(), dict(training.CPU_RECIPE)
    for field in dataclasses.fields(training.TrainConfig):
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


def _multi_worker_strategy(communication):
    """MultiWorkerMirroredStrategy from TF_CONFIG; created before any other TensorFlow op."""
    import json

    import tensorflow as tf

    config = os.environ.get("TF_CONFIG")
    try:
        cluster = json.loads(config)["cluster"] if config else None
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"TF_CONFIG is not valid JSON with a 'cluster' entry: {config!r}")
    if not cluster:
        raise CommandError(
            "--multi-worker needs TF_CONFIG on every worker, e.g. "
            '\'{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (see docs/multi-worker.md).')
    implementation = getattr(tf.distribute.experimental.CommunicationImplementation,
                             communication.upper())
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def cmd_train(args):
    import dataclasses

    strategy = _multi_worker_strategy(args.communication) if args.multi_worker else None
    from tf_netvlad import training

    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    given = {k: (_train_value(k, v) if isinstance(v, str) else v) for k, v in given.items()}
    recipe = dict(training.CPU_RECIPE) if args.recipe == "cpu" else {}
    config = dataclasses.replace(training.TrainConfig(), **{**recipe, **given})
    summary = training.train(args.dataset, args.val, root=args.root, val_root=args.val_root,
                             out_dir=args.out, config=config, resume=args.resume,
                             strategy=strategy)
    best = summary.get("best") or {}
    print(f"training {summary['status']}: {summary['epochs_done']} epochs in "
          f"{summary['wall_time_s'] / 60:.1f} min")
    if best:
        print("best: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in best.items()))
    for key, path in summary.get("files", {}).items():
        print(f"{key}: {path}")
    return 0


def cmd_demo(args):
    from tf_netvlad import demo

    report = demo.run_demo(data_dir=args.data, run_dir=args.run_dir, saved_model_dir=args.saved_model,
                           minutes=args.minutes, seed=args.seed, data_scale=args.scale,
                           epochs=args.epochs, fresh=args.fresh)
    print(demo.format_report(report))
    return 0


# --------------------------------------------------------------------------- parser


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
    parser.add_argument("--num-clusters", type=int, default=64, help="NetVLAD clusters K")


def build_parser(argv=None):
    parser = argparse.ArgumentParser(
        prog="tf_netvlad", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="NetVLAD place recognition with Keras 3 / TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.set_defaults(func=handler)
        return sub

    p = add("demo", cmd_demo, "The main job: demo data, k-means init, train (bounded time), evaluate, "
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

    p = add("train", cmd_train, "Weakly supervised training with hard-negative mining.")
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
    argv = sys.argv[1:] if argv is None else argv
    if "train" in [a for a in argv if not a.startswith("-")][:1]:
        _add_train_flags(p)
    else:
        p.epilog = "Run `tf_netvlad train --help` for the flag of every recipe number."

    p = add("demo-data", cmd_demo_data, "Generate the small street-like demo dataset.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies street lengths and query counts (e.g. 0.1 for a quick test)")
    p.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                   help="image height and width in pixels")

    p = add("init", cmd_init, "Build a model and initialise NetVLAD by k-means on database images.")
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

    p = add("evaluate-map", cmd_evaluate_map,
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

    p = add("evaluate", cmd_evaluate,
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
                        "as 'IVF1024,PQ64', or no value for IVF(~4 sqrt n),PQ(<=64)")
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

    p = add("fit-whitening", cmd_fit_whitening,
            "Fit PCA-whitening on database descriptors and append it to a model.")
    _add_data_flags(p, "dataset whose database images are used (the training split, as the paper)")
    p.add_argument("--model", required=True, help="input .keras model")
    p.add_argument("--dim", type=int, default=256, help="whitened output dimension")
    p.add_argument("--max-images", type=int, default=10_000, help="at most this many database images")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    p = add("export", cmd_export,
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

    p = add("index", cmd_index, "Index database images for search: streaming, resumable extraction "
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

    p = add("localize", cmd_localize, "Localise photos: top-N database images, scores, positions "
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
                   help="stop at an unreadable query image (default: report it, localise the rest, exit 1)")

    p = add("convert", cmd_convert, "Convert official MatConvNet or PyTorch NetVLAD weights.")
    p.add_argument("--matconvnet", help="struct-form MatConvNet .mat (e.g. Pitts30K_struct.mat)")
    p.add_argument("--pytorch", help="pytorch-NetVlad / Patch-NetVLAD checkpoint (.pth.tar)")
    p.add_argument("--arch", choices=("vgg16", "alexnet"), help="encoder of a PyTorch checkpoint "
                   "(default: detected from its keys)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="load the checkpoint with torch's full pickle loader (only for trusted files)")
    p.add_argument("--out", required=True, help="output model file (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def _configure_logging(verbose):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# TensorFlow's C++ start-up notices, printed before TF_CPP_MIN_LOG_LEVEL takes effect.
_STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations",
                  "cpu_feature_guard.cc", "To enable the following instructions",
                  "Could not find cuda drivers", "Unable to register cu")


def import_tensorflow_quietly():
    """Imports TensorFlow with its start-up notices filtered out of stderr.

    Everything else TensorFlow writes to stderr while importing (and the whole output when the
    import fails) is passed through, so no real warning or error is hidden.
    """
    import tempfile

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            failed = True
            raise
        else:
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [
                line for line in lines if not any(noise in line for noise in _STARTUP_NOISE)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def main(argv=None):
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.command != "demo-data" and not args.verbose:
        import_tensorflow_quietly()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, RuntimeError, OSError, ImportError) as err:
        if args.debug:
            raise
        print(f"tf_netvlad {args.command}: error: {err}", file=sys.stderr)
        return 2
