"""`tf_netvlad models` (the published weights `--model NAME` accepts, and which are cached) and
`resolve_model_flag`, which every command with `--model` runs once its other inputs are read, so
that `--model` also takes a pretrained name or an https:// / hf:// / kaggle:// URI
(`tf_netvlad.convert.pretrained`) and a missing dataset fails before a download.

Listing imports neither TensorFlow nor Keras.
"""

import os

from tf_netvlad.cli import flags
from tf_netvlad.convert import download, pretrained


def add_commands(subparsers):
    """Adds `models`."""
    p = flags.add_command(
        subparsers, "models", list_models,
        "List the published NetVLAD weights that --model NAME and tf_netvlad.load_pretrained(NAME) "
        "accept (downloaded and converted on first use, then cached).", tensorflow=False)
    p.add_argument("name", nargs="?", help="show one model in detail: URL, cache files and the "
                                           "provenance its converted .keras file records")


def resolve_model_flag(args):
    """Replaces `args.model` (when the command has one and it is set) by a local `.keras` path.

    A handler calls it after reading and checking its other inputs (dataset, ground truth, index,
    image folders): a pretrained name is a download of hundreds of MB and a conversion."""
    if getattr(args, "model", None):
        args.model = pretrained.resolve_model_arg(args.model, flag="--model")


_STATE = {"converted": "yes", "downloaded": "download only", "no": "no"}


def list_models(args):
    if args.name:
        return _show(pretrained.get_entry(args.name))
    rows = [("NAME", "DIM", "CONVERTER", "CACHED", "SOURCE")]
    for name, entry in pretrained.PRETRAINED.items():
        rows.append((name, str(entry.descriptor_dim), entry.converter, _STATE[download.cache_state(entry)],
                     entry.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print(f"\ncache: {download.cache_dir()} (KERAS_HOME/tf_netvlad)")
    print("use: tf_netvlad evaluate --model NAME ...; in Python: tf_netvlad.load_pretrained(NAME)")
    return 0


def _show(entry):
    model_path, download_path = download.cached_model_path(entry), download.cached_download_path(entry)
    lines = [
        ("name", entry.name), ("model", entry.description), ("descriptor", f"{entry.descriptor_dim}-D"),
        ("url", entry.url), ("source", entry.source), ("converter", entry.converter),
        ("published size", "not published" if entry.size is None else f"{entry.size} bytes"),
        ("published hash", entry.sha256 or entry.md5 or "not published"),
        ("converted model", model_path + ("" if os.path.isfile(model_path) else " (not cached)")),
        ("download", download_path + ("" if os.path.isfile(download_path) else " (not cached)")),
        ("offline", f"{entry.convert_command()}"),
    ]
    record = pretrained.read_model_source(model_path) if os.path.isfile(model_path) else None
    if record:
        lines += [("file sha256", record.get("file_sha256")),
                  ("converted by", f"tf_netvlad {record.get('tf_netvlad_version')} ({record.get('converter')}) "
                                   f"at {record.get('converted_at')}")]
    for key, value in lines:
        print(f"{key + ':':17}{value}")
    return 0
