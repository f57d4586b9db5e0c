"""`tf_netvlad index` and `tf_netvlad localize`: an on-disk, resumable image index
(`tf_netvlad.retrieval.build`, `.index`) and the localisation of photos against it (`tf_netvlad.retrieval.localize`);
`tf_netvlad hloc`: global descriptors and retrieval pairs in hloc's files (`tf_netvlad.retrieval.hloc`).
"""

import argparse
import os
import sys

from tf_netvlad.cli import flags, pretrained
from tf_netvlad.data.utm import normalize_utm_zone
from tf_netvlad.defaults import INDEX_CHUNK_SIZE, LOCALIZE_TOP_K


def utm_zone_label(text):
    """`--utm-zone`: '17T' (zone number and latitude-band letter), checked at parse time."""
    try:
        return normalize_utm_zone(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(subparsers):
    """Adds `index`, `localize` and `hloc`."""
    p = flags.add_command(subparsers, "index", index, "Index database images for search: streaming, "
                          "resumable extraction and a faiss index with paths and positions.")
    flags.add_model_file(p)
    flags.add_dataset(p, "database images of a split (.mat, CSV or @-folder)", required=False)
    p.add_argument("--images", help="a folder of images (positions from @-file names when present)")
    flags.add_root(p)
    flags.add_dataset_roots(p, queries=False)
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--kind", default="flat",
                   help="flat (exact inner product), ivfpq, hnsw or a faiss factory string")
    p.add_argument("--float16", action="store_true", help="store descriptors as float16")
    # An index keeps the policy it was built with: --add refuses --image-size.
    new_or_add = p.add_mutually_exclusive_group()
    flags.add_image_size(new_or_add, help="resize policy of a new index (--add uses the index's)")
    flags.add_batch_size(p)
    p.add_argument("--chunk-size", type=flags.positive_int, default=INDEX_CHUNK_SIZE,
                   help="images per on-disk chunk (resume unit)")
    flags.add_strict(p, "stop on an unreadable image instead of skipping it")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted build and start over")
    flags.add_overwrite(p, "replace an existing index")
    new_or_add.add_argument("--add", action="store_true", help="add the images to an existing index")
    p.add_argument("--utm-zone", type=utm_zone_label,
                   help="UTM zone of the positions, zone number + latitude band like 17T (default: "
                        "the dataset's or the @-names'); localize then also gives latitude/longitude")
    p.set_defaults(check=lambda args: flags.check_output(args.out, "--out", directory=True))

    p = flags.add_command(subparsers, "localize", localize, "Localise photos: top-N database images, "
                          "scores, positions and an estimated position.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--index", required=True, help="index directory from `tf_netvlad index`")
    flags.add_model_file(p, "the .keras model the index was built with")
    p.add_argument("--top-k", type=flags.positive_int, default=LOCALIZE_TOP_K,
                   help="retrieved database images per query")
    flags.add_image_size(p, default=None, help="resize policy (default: the index's)")
    p.add_argument("--gt-dataset", help="split with the queries' true positions (marks results correct)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG grid of queries and retrievals here")
    flags.add_strict(p, "stop at an unreadable query image or one missing from --gt-dataset "
                        "(default: report it, localise the rest; exit 1 if an image was unreadable)")
    p.set_defaults(check=check_localize_outputs)

    p = flags.add_command(subparsers, "hloc", hloc, "Write global descriptors and retrieval pairs in "
                          "hloc's formats (features .h5, pairs .txt) from a model or an index.")
    p.add_argument("--features", help="hloc global-features file to write (.h5): one group per image "
                                      "name holding `global_descriptor`")
    p.add_argument("--pairs", help="hloc retrieval pairs to write (.txt): 'query db' lines, best first")
    p.add_argument("--num-matched", type=flags.positive_int,
                   help="database images per query in --pairs (hloc's --num_matched)")
    p.add_argument("--index", help="an index from `tf_netvlad index`: its stored descriptors are "
                                   "written, nothing is extracted")
    flags.add_model_file(p, "the .keras model (needed with --dataset / --images, and with --queries "
                            "of an --index)", required=False)
    flags.add_dataset(p, "a split: its database and query images", required=False)
    p.add_argument("--images", help="a folder of database images (recursive)")
    p.add_argument("--queries", help="query images: a folder, or a split file (its queries); default: "
                                     "the --dataset's queries, else the database itself")
    flags.add_root(p)
    flags.add_dataset_roots(p)
    p.add_argument("--image-dir", help="folder the hloc image names are relative to (hloc's "
                                       "--image_dir); default: the common folder of the images")
    p.add_argument("--keep-self", action="store_true",
                   help="let a query retrieve the database image of the same name (hloc never does)")
    p.add_argument("--min-score", type=flags.optional(float), default="0",
                   help="drop retrievals with a lower similarity, as hloc does ('none': keep all)")
    p.add_argument("--float32", action="store_true",
                   help="store float32 descriptors (default: float16, as hloc's as_half)")
    p.add_argument("--append", action="store_true",
                   help="add to an existing --features file (same model; names there are replaced)")
    flags.add_overwrite(p, "replace existing --features / --pairs files")
    flags.add_image_size(p, default=None, help="resize policy (default: the --index's, else keep)")
    flags.add_batch_size(p)
    flags.add_strict(p, "stop at an unreadable image (default: leave it out of both files, list it)")
    p.set_defaults(check=check_hloc_arguments)


def check_localize_outputs(args):
    """--json and --plot of `localize`, refused before any work if they cannot be written."""
    flags.check_output(args.json, "--json", (".json",))
    flags.check_output(args.plot, "--plot", (".png",))


def index(args):
    from tf_netvlad.retrieval import build as build_lib
    from tf_netvlad.retrieval import index as index_lib

    if bool(args.dataset) == bool(args.images):
        raise flags.CommandError("Pass exactly one of --dataset FILE or --images DIR.")
    images = args.images
    if args.dataset:  # only the database images are indexed: only they must exist
        images = flags.load_dataset(args.dataset, args.root, args.db_root, parts=("db",))
    if args.add:
        built = index_lib.RetrievalIndex.load(args.out)
        pretrained.resolve_model_flag(args)  # after the inputs: a name is a download
        built.add(args.model, images, root=args.root, batch_size=args.batch_size,
                  chunk_size=args.chunk_size, on_error=args.on_error, utm_zone=args.utm_zone)
    else:
        pretrained.resolve_model_flag(args)
        built = build_lib.build_retrieval_index(
            args.model, args.out, images, root=args.root, image_size=args.image_size, kind=args.kind,
            float16=args.float16, batch_size=args.batch_size, chunk_size=args.chunk_size,
            on_error=args.on_error, resume=not args.restart, overwrite=args.overwrite,
            utm_zone=args.utm_zone,
        )
    zone = f", UTM zone {built.utm_zone}" if built.utm_zone else ""
    print(f"index: {args.out} ({built.count} images, {built.dim}-D{zone})")
    return 0


def localize(args):
    import numpy as np

    from tf_netvlad.data import split_loading
    from tf_netvlad.retrieval import localize as localize_lib
    from tf_netvlad.retrieval.index import RetrievalIndex

    strict = args.on_error == "raise"
    index = RetrievalIndex.load(args.index)
    gt = None
    if args.gt_dataset:
        gt = localize_lib.positions_from_split(split_loading.load_split(args.gt_dataset), args.images,
                                               missing="raise" if strict else "nan")
        for path in np.asarray(args.images)[np.isnan(gt).any(axis=1)]:
            print(f"tf_netvlad localize: {path} is not in --gt-dataset; its results are not marked "
                  "correct or incorrect.", file=sys.stderr)
    pretrained.resolve_model_flag(args)  # after the index and the ground truth
    results = localize_lib.localize(index, args.model, args.images, k=args.top_k,
                                    image_size=args.image_size, gt_positions=gt,
                                    on_error=args.on_error)
    print(localize_lib.format_results(results))
    if args.json:
        localize_lib.write_results(results, args.json)
        print(f"json: {args.json}")
    if args.plot:
        localize_lib.plot_localization(results, args.plot)
        print(f"plot: {args.plot}")
    failed = sum("error" in r for r in results)
    if failed:
        print(f"tf_netvlad localize: {failed} of {len(results)} query images could not be read "
              "and were not localised (see above).", file=sys.stderr)
        return 1
    return 0


def check_hloc_arguments(args):
    """Outputs, sources and counts of `hloc`, refused before any work."""
    if not (args.features or args.pairs):
        raise flags.CommandError("Nothing to write: pass --features FILE.h5 and/or --pairs FILE.txt.")
    if args.pairs and args.num_matched is None:
        raise flags.CommandError("--pairs needs --num-matched K: the database images kept per query.")
    flags.check_output(args.features, "--features", (".h5", ".hdf5"))
    flags.check_output(args.pairs, "--pairs", (".txt",))
    if args.features and os.path.exists(args.features) and not (args.overwrite or args.append):
        raise flags.CommandError(f"--features {args.features} already exists; pass --append to add "
                                 "to it or --overwrite to replace it.")
    if args.pairs and os.path.exists(args.pairs) and not args.overwrite:
        raise flags.CommandError(f"--pairs {args.pairs} already exists; pass --overwrite to replace it.")
    if sum(bool(v) for v in (args.index, args.dataset, args.images)) != 1:
        raise flags.CommandError("Pass exactly one of --index DIR (its descriptors), --dataset FILE "
                                 "or --images DIR (extracted with --model).")
    if not args.index and not args.model:
        raise flags.CommandError("--dataset / --images need --model to extract descriptors.")


def hloc(args):
    from tf_netvlad.retrieval import hloc as hloc_lib
    from tf_netvlad.retrieval.index import RetrievalIndex

    images, root = args.images, args.root
    if args.dataset:  # its images are checked here; its root is the one resolved for it
        parts = ("db",) if args.queries else ("db", "query")
        images = flags.load_dataset(args.dataset, args.root, args.db_root, args.query_root, parts=parts)
        root = None
    index = RetrievalIndex.load(args.index) if args.index else None
    pretrained.resolve_model_flag(args)  # after the images and the index
    summary = hloc_lib.export_hloc(
        features=args.features, pairs=args.pairs, model=args.model, images=images,
        queries=args.queries, index=index, root=root, image_dir=args.image_dir,
        num_matched=args.num_matched, exclude_self=not args.keep_self, min_score=args.min_score,
        image_size=args.image_size, as_half=not args.float32, append=args.append,
        overwrite=args.overwrite, batch_size=args.batch_size, on_error=args.on_error,
    )
    print(hloc_lib.format_summary(summary))
    return 0
