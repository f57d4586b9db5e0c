"""`tf_netvlad index` and `tf_netvlad localize`: an on-disk, resumable image index
(`tf_netvlad.retrieval.index`) and the localisation of photos against it (`tf_netvlad.retrieval.localize`).
"""

import sys

from tf_netvlad.cli import flags
from tf_netvlad.defaults import INDEX_CHUNK_SIZE, LOCALIZE_TOP_K


def add_commands(subparsers):
    """Adds `index` and `localize`."""
    p = flags.add_command(subparsers, "index", index, "Index database images for search: streaming, "
                          "resumable extraction and a faiss index with paths and positions.")
    flags.add_model_file(p)
    flags.add_dataset(p, "database images of a split (.mat, CSV or @-folder)", required=False)
    p.add_argument("--images", help="a folder of images (positions from @-file names when present)")
    flags.add_root(p, "image root of the dataset (default: its folder)")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--kind", default="flat",
                   help="flat (exact inner product), ivfpq, hnsw or a faiss factory string")
    p.add_argument("--float16", action="store_true", help="store descriptors as float16")
    # An index keeps the policy it was built with: --add refuses --image-size.
    new_or_add = p.add_mutually_exclusive_group()
    flags.add_image_size(new_or_add, help="resize policy of a new index (--add uses the index's)")
    flags.add_batch_size(p)
    p.add_argument("--chunk-size", type=int, default=INDEX_CHUNK_SIZE,
                   help="images per on-disk chunk (resume unit)")
    flags.add_strict(p, "stop on an unreadable image instead of skipping it")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted build and start over")
    flags.add_overwrite(p, "replace an existing index")
    new_or_add.add_argument("--add", action="store_true", help="add the images to an existing index")

    p = flags.add_command(subparsers, "localize", localize, "Localise photos: top-N database images, "
                          "scores, positions and an estimated position.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--index", required=True, help="index directory from `tf_netvlad index`")
    flags.add_model_file(p, "the .keras model the index was built with")
    p.add_argument("--top-k", type=int, default=LOCALIZE_TOP_K, help="retrieved database images per query")
    flags.add_image_size(p, default=None, help="resize policy (default: the index's)")
    p.add_argument("--gt-dataset", help="split with the queries' true positions (marks results correct)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG grid of queries and retrievals here")
    flags.add_strict(p, "stop at an unreadable query image or one missing from --gt-dataset "
                        "(default: report it, localise the rest; exit 1 if an image was unreadable)")


def index(args):
    from tf_netvlad.data import places
    from tf_netvlad.retrieval import index as index_lib

    if bool(args.dataset) == bool(args.images):
        raise flags.CommandError("Pass exactly one of --dataset FILE or --images DIR.")
    images = places.load_split(args.dataset, root=args.root) if args.dataset else args.images
    if args.add:
        built = index_lib.RetrievalIndex.load(args.out)
        built.add(args.model, images, root=args.root, batch_size=args.batch_size,
                  chunk_size=args.chunk_size, on_error=args.on_error)
    else:
        built = index_lib.build_retrieval_index(
            args.model, args.out, images, root=args.root, image_size=args.image_size, kind=args.kind,
            float16=args.float16, batch_size=args.batch_size, chunk_size=args.chunk_size,
            on_error=args.on_error, resume=not args.restart, overwrite=args.overwrite,
        )
    print(f"index: {args.out} ({built.count} images, {built.dim}-D)")
    return 0


def localize(args):
    import numpy as np

    from tf_netvlad.data import places
    from tf_netvlad.retrieval import localize as localize_lib

    strict = args.on_error == "raise"
    gt = None
    if args.gt_dataset:
        gt = localize_lib.positions_from_split(places.load_split(args.gt_dataset), args.images,
                                               missing="raise" if strict else "nan")
        for path in np.asarray(args.images)[np.isnan(gt).any(axis=1)]:
            print(f"tf_netvlad localize: {path} is not in --gt-dataset; its results are not marked "
                  "correct or incorrect.", file=sys.stderr)
    results = localize_lib.localize(args.index, args.model, args.images, k=args.top_k,
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
