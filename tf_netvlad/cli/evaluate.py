"""`tf_netvlad evaluate` (recall@N on a place-recognition split, `tf_netvlad.evaluation.run`) and
`tf_netvlad evaluate-map` (Oxford/Paris mAP, `tf_netvlad.evaluation.oxford_paris`).
"""

import argparse
import logging
import sys

from tf_netvlad.cli import flags, pretrained
from tf_netvlad.evaluation.protocols import PROTOCOLS

log = logging.getLogger("tf_netvlad")


def recall_ns(text):
    """`--recall-ns`: 'default' (1,5,10,20), 'reference' (MATLAB's 1-5, 10-100 step 5) or '1,5,10'."""
    from tf_netvlad.evaluation import recall_metrics

    named = {"default": recall_metrics.DEFAULT_RECALL_NS, "reference": recall_metrics.REFERENCE_RECALL_NS}
    if text in named:
        return named[text]
    try:
        return flags.int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'default', 'reference' or e.g. '1,5,10' (positive integers). Received: {text!r}") from None


def add_commands(subparsers):
    """Adds `evaluate` and `evaluate-map`."""
    p = flags.add_command(subparsers, "evaluate", evaluate, "recall@N of a model (or of an "
                          "off-the-shelf k-means-initialised backbone) on a dataset.")
    flags.add_extraction_flags(p, "dbStruct .mat, CSV manifest or @-named image folder")
    flags.add_model_file(p, required=False)
    flags.add_backbone_flags(p)
    p.add_argument("--recall-ns", type=recall_ns, default="default",
                   help="N values: 'default' (1,5,10,20), 'reference' (1-5, 10-100 step 5) or a list")
    p.add_argument("--json", help="write results as JSON here")
    p.add_argument("--plot", help="write a recall@N curve PNG here")
    p.add_argument("--retrievals", help="write a PNG grid of queries and their top-5 retrievals here")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="auto: Tokyo 24/7 if the dataset name contains tokyo247 (panorama NMS over 12 "
                        "cutouts, day/sunset/night recall, queries at most 640 px), TokyoTM if it has "
                        "time stamps (same-time db images dropped), else Pittsburgh")
    flags.add_image_size(p, flag="--query-image-size", default="auto", auto=True,
                         help="resize policy of the queries: 'auto' (= --image-size; max side 640 "
                              "for tokyo247) or a policy as --image-size")
    p.add_argument("--approx-index", nargs="?", const="auto", default=None, metavar="FACTORY",
                   help="also report recall with an approximate faiss index: a factory string such "
                        "as 'IVF1024,PQ64', or no value for IVF(~4 sqrt n),PQ(D/16, <= 256)")
    p.add_argument("--approx-train-size", type=flags.positive_int, default=None,
                   help="training vectors of the approximate index; None: 40 per IVF cell")
    p.add_argument("--approx-nprobe", type=flags.positive_int, default=None,
                   help="IVF cells visited per query; None: nlist/16, at least 8")
    p.add_argument("--descriptor-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the database descriptors held during evaluation")
    p.add_argument("--memmap-dir", default=None,
                   help="keep the database descriptors in a temporary .npy memmap in this folder "
                        "(removed afterwards) instead of RAM")
    flags.add_strict(p, "stop at an unreadable image (default: leave it out, count and list it)")
    p.set_defaults(check=check_outputs)

    p = flags.add_command(subparsers, "evaluate-map", evaluate_map, "Oxford5k/Paris6k-style mAP with "
                          "ok/junk lists (revisited easy/medium/hard or original).")
    flags.add_model_file(p)
    p.add_argument("--gt", required=True,
                   help="revisited gnd_*.pkl, or a folder of original *_good/_ok/_junk/_query.txt "
                        "files. A .pkl is read with a data-only unpickler (lists, dicts, numbers, "
                        "strings, NumPy arrays): a file that asks for anything else is refused, "
                        "and no code from it runs")
    p.add_argument("--images", required=True, help="folder of the database and query images")
    p.add_argument("--ext", default=".jpg", help="image file extension")
    flags.add_image_size(p, help="resize policy: keep, max side, or HxW")
    flags.add_batch_size(p)
    p.add_argument("--no-crop", action="store_true", help="use whole query images, not their boxes")
    p.add_argument("--box-margin", type=float, default=0.0,
                   help="pixels added to each side of a query box (MATLAB VGG16 conv5_3: 98)")
    p.add_argument("--query-resize", choices=("crop", "image"), default="crop",
                   help="resize the crop (revisited code) or the whole image before cropping")
    p.add_argument("--top-k", type=flags.positive_int, default=None,
                   help="rank only the top K database images (default: the whole database)")
    p.add_argument("--on-missing", choices=("raise", "drop"), default="raise",
                   help="text ground truth: stop at, or drop, names missing from --images")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG of per-query AP histograms here")
    p.add_argument("--retrievals", help="write a PNG grid of queries and their top images here")
    p.set_defaults(check=check_outputs)


def check_outputs(args):
    """The outputs of `evaluate` / `evaluate-map`, refused before any work if they cannot be written."""
    flags.check_output(args.json, "--json", (".json",))
    flags.check_output(args.plot, "--plot", (".png",))
    flags.check_output(args.retrievals, "--retrievals", (".png",))
    flags.check_output(getattr(args, "memmap_dir", None), "--memmap-dir", directory=True)


def evaluate(args):
    from tf_netvlad.evaluation import run
    from tf_netvlad.evaluation.report import format_recall_table
    from tf_netvlad.models import initialization
    from tf_netvlad.models.model_files import load_model

    if bool(args.model) == bool(args.backbone):
        raise flags.CommandError("Pass exactly one of --model FILE.keras or --backbone NAME.")
    split = flags.load_dataset(args.dataset, args.root, args.db_root, args.query_root)
    if args.model:
        pretrained.resolve_model_flag(args)  # after the dataset: a name is a download
        model = load_model(args.model, compile=False)
    else:
        model, stats = initialization.init_model(
            split, root=args.root, backbone=args.backbone, weights=args.weights,
            num_clusters=args.num_clusters, image_size=args.image_size, seed=args.seed,
            batch_size=args.batch_size,
        )
        log.info("off-the-shelf NetVLAD: k-means init with alpha %.2f", stats["alpha"])
    results = run.evaluate_model(
        model, split, root=args.root, image_size=args.image_size, ns=args.recall_ns,
        batch_size=args.batch_size, json_path=args.json, plot_path=args.plot,
        retrievals_path=args.retrievals, protocol=args.protocol, approximate=args.approx_index,
        query_image_size=args.query_image_size, approx_train_size=args.approx_train_size,
        approx_nprobe=args.approx_nprobe, descriptor_dtype=args.descriptor_dtype,
        memmap_dir=args.memmap_dir, on_error=args.on_error,
    )
    print(format_recall_table(results, labels=[results["model"]]))
    for entry in results.get("unreadable", []):
        print(f"unreadable {entry['kind']} image left out: {entry['path']} ({entry['reason']})",
              file=sys.stderr)
    flags.print_written(json=args.json, plot=args.plot, retrievals=args.retrievals)
    return 0


def evaluate_map(args):
    from tf_netvlad.evaluation import ground_truth, oxford_paris
    from tf_netvlad.models.model_files import load_model

    gt = ground_truth.load_ground_truth(args.gt, images_dir=args.images, ext=args.ext,
                                        on_missing=args.on_missing)
    pretrained.resolve_model_flag(args)
    model = load_model(args.model, compile=False)
    results = oxford_paris.evaluate_map(
        model, gt, args.images, image_size=args.image_size, crop_queries=not args.no_crop,
        batch_size=args.batch_size, ext=args.ext, box_margin=args.box_margin,
        query_resize=args.query_resize, k=args.top_k, json_path=args.json, plot_path=args.plot,
        retrievals_path=args.retrievals,
    )
    print(oxford_paris.format_map_table(results))
    flags.print_written(json=args.json, plot=args.plot, retrievals=args.retrievals)
    return 0
