"""Handlers of the `tf_netvlad` subcommands: each maps its parsed flags onto one library call.

TensorFlow and the heavy modules are imported inside the handlers only; the parser lives in
`tf_netvlad.cli.parser` and the entry point in `tf_netvlad.cli.main`.
"""

import logging
import os
import sys

log = logging.getLogger("tf_netvlad")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _weights(value):
    return None if value in (None, "none", "None") else value


def _recall_ns(value):
    from tf_netvlad.evaluation import recall

    if value in (None, "default"):
        return recall.DEFAULT_RECALL_NS
    if value == "reference":
        return recall.REFERENCE_RECALL_NS
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise CommandError(f"--recall-ns must be 'default', 'reference' or e.g. '1,5,10'. Received: {value!r}")


def _image_size(value):
    from tf_netvlad.data import pipelines

    return pipelines.parse_image_size(value)


def _refuse_existing(path, overwrite):
    if path and os.path.exists(path) and not overwrite:
        raise CommandError(f"{path} already exists; pass --overwrite to replace it.")


# --------------------------------------------------------------------------- handlers


def cmd_demo_data(args):
    from tf_netvlad.demo import dataset

    paths = dataset.generate_demo_data(args.out, seed=args.seed, scale=args.scale,
                                         image_size=tuple(args.image_size))
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def cmd_init(args):
    from tf_netvlad.models import initialization
    from tf_netvlad.models import model as model_lib
    from tf_netvlad.data import places

    _refuse_existing(args.out, args.overwrite)
    split = places.load_split_checked(args.dataset, root=args.root)
    model, stats = initialization.init_model(
        split, root=args.root, backbone=args.backbone, weights=_weights(args.weights),
        num_clusters=args.num_clusters, variant=args.variant, image_size=_image_size(args.image_size),
        num_images=args.num_images, per_image=args.per_image, niter=args.niter, seed=args.seed,
        batch_size=args.batch_size,
    )
    model_lib.save_model(model, args.out)
    print(f"k-means init: {stats['num_descriptors']} descriptors, alpha={stats['alpha']:.2f}, "
          f"top-1/top-2 assignment ratio {stats['assignment_ratio']:.1f}")
    print(f"model: {args.out}")
    return 0


def cmd_evaluate(args):
    from tf_netvlad.evaluation.report import format_recall_table
    from tf_netvlad.evaluation import run
    from tf_netvlad.models import initialization
    from tf_netvlad.data import places
    from tf_netvlad.models.model import load_model

    if bool(args.model) == bool(args.backbone):
        raise CommandError("Pass exactly one of --model FILE.keras or --backbone NAME.")
    ns = _recall_ns(args.recall_ns)
    split = places.load_split_checked(args.dataset, root=args.root)
    image_size = _image_size(args.image_size)
    if args.model:
        model = load_model(args.model, compile=False)
    else:
        model, stats = initialization.init_model(
            split, root=args.root, backbone=args.backbone, weights=_weights(args.weights),
            num_clusters=args.num_clusters, image_size=image_size, seed=args.seed,
            batch_size=args.batch_size,
        )
        log.info("off-the-shelf NetVLAD: k-means init with alpha %.2f", stats["alpha"])
    results = run.evaluate_model(
        model, split, root=args.root, image_size=image_size, ns=ns, batch_size=args.batch_size,
        json_path=args.json, plot_path=args.plot, retrievals_path=args.retrievals,
        protocol=args.protocol, approximate=args.approx_index,
        query_image_size=("auto" if args.query_image_size == "auto"
                          else _image_size(args.query_image_size)),
        approx_train_size=args.approx_train_size, approx_nprobe=args.approx_nprobe,
        descriptor_dtype=args.descriptor_dtype, memmap_dir=args.memmap_dir,
        on_error="raise" if args.strict else "skip",
    )
    print(format_recall_table(results, labels=[results["model"]]))
    for entry in results.get("unreadable", []):
        print(f"unreadable {entry['kind']} image left out: {entry['path']} ({entry['reason']})",
              file=sys.stderr)
    for flag, path in (("json", args.json), ("plot", args.plot), ("retrievals", args.retrievals)):
        if path:
            print(f"{flag}: {path}")
    return 0


def cmd_evaluate_map(args):
    from tf_netvlad.evaluation import ground_truth
    from tf_netvlad.evaluation import oxford_paris
    from tf_netvlad.models.model import load_model

    gt = ground_truth.load_ground_truth(args.gt, images_dir=args.images, ext=args.ext,
                                        on_missing=args.on_missing)
    model = load_model(args.model, compile=False)
    results = oxford_paris.evaluate_map(
        model, gt, args.images, image_size=_image_size(args.image_size),
        crop_queries=not args.no_crop, batch_size=args.batch_size, ext=args.ext,
        box_margin=args.box_margin, query_resize=args.query_resize, k=args.top_k,
        json_path=args.json, plot_path=args.plot, retrievals_path=args.retrievals,
    )
    print(oxford_paris.format_map_table(results))
    for flag, path in (("json", args.json), ("plot", args.plot), ("retrievals", args.retrievals)):
        if path:
            print(f"{flag}: {path}")
    return 0


def cmd_fit_whitening(args):
    from tf_netvlad.models import initialization
    from tf_netvlad.models import model as model_lib
    from tf_netvlad.data import places
    from tf_netvlad.models.model import load_model

    _refuse_existing(args.out, args.overwrite)
    split = places.load_split_checked(args.dataset, root=args.root)
    model = initialization.fit_whitening(
        load_model(args.model, compile=False), split.db_paths, root=split.root,
        image_size=_image_size(args.image_size), num_components=args.dim,
        max_images=args.max_images, seed=args.seed, batch_size=args.batch_size,
    )
    model_lib.save_model(model, args.out)
    print(f"whitened model ({args.dim}-D): {args.out}")
    return 0


def cmd_export(args):
    from tf_netvlad.export import saved_model

    if not (args.saved_model or args.onnx):
        raise CommandError("Pass --saved-model DIR and/or --onnx FILE.onnx.")
    if args.onnx:
        _refuse_existing(args.onnx, args.overwrite)
    if args.saved_model:
        path = saved_model.export_saved_model(
            args.model, args.saved_model, version=args.version, overwrite=args.overwrite,
            image_size=_image_size(args.image_size), descriptor_dim=args.dim,
            model_name=args.model_name, warmup=not args.no_warmup,
        )
        print(f"SavedModel: {path}")
    if args.onnx:
        saved_model.export_onnx(args.model, args.onnx, descriptor_dim=args.dim)
        print(f"ONNX: {args.onnx}")
    return 0


def cmd_index(args):
    from tf_netvlad.data import places
    from tf_netvlad.retrieval import index

    if bool(args.dataset) == bool(args.images):
        raise CommandError("Pass exactly one of --dataset FILE or --images DIR.")
    images = places.load_split(args.dataset, root=args.root) if args.dataset else args.images
    on_error = "raise" if args.strict else "skip"
    if args.add:
        if args.image_size is not None:
            raise CommandError("--add uses the index's own --image-size; do not pass it.")
        index = index.RetrievalIndex.load(args.out)
        index.add(args.model, images, root=args.root, batch_size=args.batch_size,
                  chunk_size=args.chunk_size, on_error=on_error)
    else:
        index = index.build_retrieval_index(
            args.model, args.out, images, root=args.root, image_size=_image_size(args.image_size or "keep"),
            kind=args.kind, float16=args.float16, batch_size=args.batch_size, chunk_size=args.chunk_size,
            on_error=on_error, resume=not args.restart, overwrite=args.overwrite,
        )
    print(f"index: {args.out} ({index.count} images, {index.dim}-D)")
    return 0


def cmd_localize(args):
    import numpy as np

    from tf_netvlad.retrieval import localize
    from tf_netvlad.data import places

    gt = None
    if args.gt_dataset:
        gt = localize.positions_from_split(places.load_split(args.gt_dataset), args.images,
                                           missing="raise" if args.strict else "nan")
        for path in np.asarray(args.images)[np.isnan(gt).any(axis=1)]:
            print(f"tf_netvlad localize: {path} is not in --gt-dataset; its results are not marked "
                  "correct or incorrect.", file=sys.stderr)
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
    from tf_netvlad.convert.matconvnet import convert_matconvnet
    from tf_netvlad.convert.pytorch import convert_pytorch

    if bool(args.matconvnet) == bool(args.pytorch):
        raise CommandError("Pass exactly one of --matconvnet FILE.mat or --pytorch CHECKPOINT.")
    _refuse_existing(args.out, args.overwrite)
    if args.matconvnet:
        model = convert_matconvnet(args.matconvnet, out_path=args.out)
    else:
        model = convert_pytorch(args.pytorch, out_path=args.out, arch=args.arch,
                                        weights_only=not args.unsafe_load)
    print(f"converted {model.backbone_name} NetVLAD (K={model.num_clusters}, "
          f"{model.descriptor_dim}-D descriptors): {args.out}")
    return 0


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
    from tf_netvlad.training import train
    from tf_netvlad.training.config import CPU_RECIPE

    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    given = {k: (_train_value(k, v) if isinstance(v, str) else v) for k, v in given.items()}
    recipe = dict(CPU_RECIPE) if args.recipe == "cpu" else {}
    config = dataclasses.replace(train.TrainConfig(), **{**recipe, **given})
    summary = train.train(args.dataset, args.val, root=args.root, val_root=args.val_root,
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
    from tf_netvlad.demo import run

    report = run.run_demo(data_dir=args.data, run_dir=args.run_dir, saved_model_dir=args.saved_model,
                           minutes=args.minutes, seed=args.seed, data_scale=args.scale,
                           epochs=args.epochs, fresh=args.fresh)
    print(run.format_report(report))
    return 0
