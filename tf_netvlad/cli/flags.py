"""The flags several `tf_netvlad` subcommands share, each defined once, and their `type=` converters.

A shared flag is added by one helper here; the subcommand passes only what differs (its help line,
its default, whether it is required). Every value is parsed by argparse through a converter below,
so handlers receive typed values (`--image-size 480x640` arrives as `(480, 640)`, `--weights none`
as `None`) and a bad value is refused before any work starts, with exit status 2. Defaults are
read from `tf_netvlad.defaults`; nothing here imports TensorFlow.

Also here: `add_command` (one subparser with its handler), `CommandError`, the one-line error
every handler raises, and `check_output`, which every command's `check` (set with
`parser.set_defaults(check=...)`, run by `cli.main` before TensorFlow is imported) calls on each
of its outputs, so a path that cannot be written is refused before any work.
"""

import argparse
import os

from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.defaults import BACKBONE_NAMES, EXTRACT_BATCH_SIZE, NUM_CLUSTERS, SEED


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def add_command(subparsers, name, handler, help_text, tensorflow=True):
    """Adds subcommand `name` run by `handler(args)`; `tensorflow=False` when it never needs TF."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(func=handler, needs_tensorflow=tensorflow)
    return parser


# --------------------------------------------------------------------------- type= converters


def image_size(text):
    """`--image-size`: 'keep' -> None, '640' -> 640 (max side), '480x640' -> (480, 640)."""
    try:
        return parse_image_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def image_size_or_keep(text):
    """As `image_size`, but 'keep' stays the word: for a flag whose absence (None) means another
    policy (the index's), so that an explicit `--image-size keep` is not read as "not given"."""
    return "keep" if text.strip().lower() == "keep" else image_size(text)


def image_size_or_auto(text):
    """As `image_size`, or the word 'auto' (the command picks the policy)."""
    return "auto" if text.strip().lower() == "auto" else image_size(text)


def optional_text(text):
    """'none' or 'null' (any case) -> None; any other text unchanged (a name or a file)."""
    return None if text.strip().lower() in ("none", "null") else text


def int_list(text):
    """'1,5,10' -> (1, 5, 10); every value must be >= 1 (lists of N for recall@N)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive integers like '1,5,10'. Received: {text!r}")
    return values


def positive_int(text):
    """An integer >= 1 (a count, a size, a dimension, top-k): '0' or '-3' is refused at parse time."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def positive_float(text):
    """A finite number > 0 (minutes, a scale)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0. Received: {text!r}")
    return value


def optional(convert):
    """`convert`, or None for 'none' / 'null' (a setting whose None means 'off' or 'all')."""
    def parse(text):
        return None if optional_text(text) is None else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


# --------------------------------------------------------------------------- shared flags

IMAGE_SIZE_HELP = ("resize policy: 'keep' (full resolution, as MATLAB), a max side '640', or a "
                   "fixed 'HxW' like '480x640'")


def add_image_size(parser, help=IMAGE_SIZE_HELP, default="keep", flag="--image-size", auto=False):
    """The resize policy of the images a command reads (`tf_netvlad.data.image_size`).

    `default` is given as on the command line ('keep', '480x640', ...) so --help shows it as typed;
    argparse parses it like a given value. `auto=True` also accepts the word 'auto'. With
    `default=None` (the command then uses another policy, e.g. its index's) 'keep' is kept as the
    word, which the library functions parse: otherwise it would parse to None, "not given".
    """
    kind = image_size_or_auto if auto else image_size_or_keep if default is None else image_size
    return parser.add_argument(flag, type=kind, default=default, help=help)


def add_batch_size(parser):
    """Images per extraction batch."""
    return parser.add_argument("--batch-size", type=positive_int, default=EXTRACT_BATCH_SIZE,
                               help="images per extraction batch")


def add_dataset(parser, help, required=True):
    """A place-recognition split: dbStruct .mat, CSV manifest or @-named image folder."""
    return parser.add_argument("--dataset", required=required, help=help)


ROOT_HELP = ("dataset root as its authors ship it (default: the dataset file's folder, else its "
             "parent); the database and query folders under it are detected (images/ + queries/, "
             "images/ + query/, images/, queries_real/, or as listed) and printed")


def add_root(parser, help=ROOT_HELP):
    """The dataset root a split's database and query folders are detected under."""
    return parser.add_argument("--root", default=None, help=help)


def add_dataset_roots(parser, prefix="", queries=True):
    """--db-root / --query-root (train's validation split: prefix 'val-'): the folders the
    split's database / query names are relative to, instead of the detected ones."""
    parser.add_argument(f"--{prefix}db-root", default=None,
                        help="folder the database image names are relative to, instead of the "
                             "detected one")
    if queries:
        parser.add_argument(f"--{prefix}query-root", default=None,
                            help="folder the query image names are relative to, instead of the "
                                 "detected one")


def load_dataset(path, root=None, db_root=None, query_root=None, parts=("db", "query"), prefix="",
                 label="dataset"):
    """Loads a split given by flags (`split_loading.load_split_checked`): every image of `parts` is
    checked before any work, errors name the flags with `prefix`; prints how it was read
    (layout, columns, UTM zone) as 'LABEL: ...' lines."""
    from tf_netvlad.data import split_loading

    split = split_loading.load_split_checked(
        path, root=root, db_root=db_root, query_root=query_root, parts=parts,
        flags=(f"--{prefix}root", f"--{prefix}db-root", f"--{prefix}query-root"))
    for note in split.notes:
        print(f"{label}: {note}")
    return split


def add_extraction_flags(parser, dataset_help):
    """--dataset, --root, --db-root, --query-root, --image-size, --batch-size and --seed of a
    command that extracts descriptors of a split's images (and samples them with --seed)."""
    add_dataset(parser, dataset_help)
    add_root(parser)
    add_dataset_roots(parser)
    add_image_size(parser)
    add_batch_size(parser)
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (sampling, k-means)")


MODEL_FORMS = ("a .keras file, a pretrained name (see `tf_netvlad models`) or an https://, hf:// or "
               "kaggle:// URI of a .keras file")


def add_model_file(parser, help="a tf_netvlad .keras model", required=True):
    """--model: a .keras model file written by tf_netvlad, or a pretrained name or a URI that
    the handler resolves to one once its other inputs are read (`cli.pretrained.resolve_model_flag`)."""
    return parser.add_argument("--model", required=required, help=f"{help}: {MODEL_FORMS}")


def add_backbone_flags(parser, backbone=None):
    """--backbone, --weights and --num-clusters of a model built from scratch.

    `backbone`: the default backbone (None: the command also accepts --model instead).
    """
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default=backbone, help="backbone name")
    parser.add_argument("--weights", type=optional_text, default="none",
                        help="backbone weights: none, imagenet (keras.applications download) or a file")
    parser.add_argument("--num-clusters", type=positive_int, default=NUM_CLUSTERS, help="NetVLAD clusters K")


def add_strict(parser, help):
    """--strict: what to do with an unreadable image, as the library's `on_error` ('raise' with
    --strict, else 'skip'), stored in `args.on_error`."""
    return parser.add_argument("--strict", dest="on_error", action="store_const", const="raise",
                               default="skip", help=help)


def add_overwrite(parser, help="replace an existing output file"):
    """--overwrite: replace the command's existing output (see `refuse_existing`)."""
    return parser.add_argument("--overwrite", action="store_true", help=help)


def refuse_existing(path, overwrite):
    """Raises `CommandError` when `path` exists and --overwrite was not given."""
    if path and os.path.exists(path) and not overwrite:
        raise CommandError(f"{path} already exists; pass --overwrite to replace it.")


def check_output(path, flag, suffixes=(), directory=False):
    """Refuses an output `path` that could not be written, before any work; nothing is created.

    Each command calls it for every output it was asked for, first thing (`cli.main` runs the
    command's `check` before importing TensorFlow or loading a model), so a bad `--json` fails at
    once instead of after the whole evaluation. A file output must end in one of `suffixes`
    (case-insensitive) and must not be a directory (nor an existing read-only file); a directory
    output (`directory=True`) must not be a file. The nearest existing folder on the way must be a
    writable directory (missing folders below it are created by the writer). `path` None or ""
    (output not asked for) passes. Raises `CommandError` naming `flag`, the path and the cause.
    """
    if not path:
        return
    path = os.fspath(path)
    where = f"{flag} {path}"
    if suffixes and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise CommandError(f"{where}: the file name must end in {' or '.join(suffixes)}.")
    if directory:
        if os.path.lexists(path) and not os.path.isdir(path):
            raise CommandError(f"{where}: this is a file; {flag} takes a directory.")
        folder = os.path.abspath(path)
    else:
        if os.path.isdir(path):
            raise CommandError(f"{where}: this is a directory; {flag} takes a file name.")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise CommandError(f"{where}: the file exists and is not writable.")
        folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise CommandError(f"{where}: {folder} is a file, not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{where}: cannot write into {folder} (permission denied or read-only).")


# Namespace fields that name an input file or folder wherever a command has them (`--dataset`,
# `--val`, the roots, `--gt`, `--images`, `--queries`, `localize --gt-dataset`); `cli.main` refuses
# a missing one before TensorFlow is imported. `--index` and `--model` are left to their loaders,
# which say more (not an index; a pretrained name or URI).
INPUT_FIELDS = ("dataset", "root", "db_root", "query_root", "val", "val_root", "val_db_root",
                "val_query_root", "gt", "images", "queries", "gt_dataset")


def check_inputs(args):
    """Refuses, naming its flag, the first input of `INPUT_FIELDS` in `args` that does not exist
    (a list, such as `localize`'s positional images, is left to its command)."""
    for field in INPUT_FIELDS:
        path = getattr(args, field, None)
        if isinstance(path, (str, os.PathLike)):
            check_input(path, "--" + field.replace("_", "-"))


def check_input(path, flag):
    """Refuses an input `path` (a file or folder the command reads) that does not exist, naming
    `flag`; `path` None or "" (not given) passes. `check_inputs` calls it for every input flag
    before TensorFlow is imported, so that a typo fails before `--model NAME` is downloaded."""
    if path and not os.path.exists(path):
        raise CommandError(f"{flag} {os.fspath(path)}: no such file or folder.")


def print_written(**paths):
    """Prints 'flag: path' for every output file that was asked for."""
    for flag, path in paths.items():
        if path:
            print(f"{flag}: {path}")
