"""The flags several `tf_netvlad` subcommands share, each defined once, and their `type=` converters.

A shared flag is added by one helper here; the subcommand passes only what differs (its help line,
its default, whether it is required). Every value is parsed by argparse through a converter below,
so handlers receive typed values (`--image-size 480x640` arrives as `(480, 640)`, `--weights none`
as `None`) and a bad value is refused before any work starts, with exit status 2. Defaults are
read from `tf_netvlad.defaults`; nothing here imports TensorFlow.

Also here: `add_command` (one subparser with its handler) and `CommandError`, the one-line error
every handler raises.
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


def image_size_or_auto(text):
    """As `image_size`, or the word 'auto' (the command picks the policy)."""
    return "auto" if text.strip().lower() == "auto" else image_size(text)


def optional_text(text):
    """'none' or 'null' (any case) -> None; any other text unchanged (a name or a file)."""
    return None if text.strip().lower() in ("none", "null") else text


def int_list(text):
    """'1,5,10' -> (1, 5, 10)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers like '1,5,10'. Received: {text!r}") from None


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
    argparse parses it like a given value. `auto=True` also accepts the word 'auto'.
    """
    return parser.add_argument(flag, type=image_size_or_auto if auto else image_size,
                               default=default, help=help)


def add_batch_size(parser):
    """Images per extraction batch."""
    return parser.add_argument("--batch-size", type=int, default=EXTRACT_BATCH_SIZE,
                               help="images per extraction batch")


def add_dataset(parser, help, required=True):
    """A place-recognition split: dbStruct .mat, CSV manifest or @-named image folder."""
    return parser.add_argument("--dataset", required=required, help=help)


def add_root(parser, help="image root the dataset's relative paths are joined to (default: the "
                          "dataset file's folder)"):
    """The image root a split's relative paths are joined to."""
    return parser.add_argument("--root", default=None, help=help)


def add_extraction_flags(parser, dataset_help):
    """--dataset, --root, --image-size, --batch-size and --seed of a command that extracts
    descriptors of a split's images (and samples them with --seed)."""
    add_dataset(parser, dataset_help)
    add_root(parser)
    add_image_size(parser)
    add_batch_size(parser)
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (sampling, k-means)")


def add_model_file(parser, help="a tf_netvlad .keras model", required=True):
    """--model: a .keras model file written by tf_netvlad."""
    return parser.add_argument("--model", required=required, help=help)


def add_backbone_flags(parser, backbone=None):
    """--backbone, --weights and --num-clusters of a model built from scratch.

    `backbone`: the default backbone (None: the command also accepts --model instead).
    """
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default=backbone, help="backbone name")
    parser.add_argument("--weights", type=optional_text, default="none",
                        help="backbone weights: none, imagenet (keras.applications download) or a file")
    parser.add_argument("--num-clusters", type=int, default=NUM_CLUSTERS, help="NetVLAD clusters K")


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


def print_written(**paths):
    """Prints 'flag: path' for every output file that was asked for."""
    for flag, path in paths.items():
        if path:
            print(f"{flag}: {path}")
