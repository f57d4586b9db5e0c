"""The `tf_netvlad` command: the entry point `main(argv)` of the console script and `python -m tf_netvlad`.

Builds the top-level parser (--debug, --verbose) with every subcommand group's parser, sets up
logging, runs the subcommand's `check` (its outputs, `flags.check_output`), imports TensorFlow
quietly, runs the subcommand's handler and maps its errors to one line on stderr and exit status 2
(a library hint such as `on_error='skip'` shown as the command's flag, `cli_message`). Building the
parsers imports no TensorFlow,
so `tf_netvlad --help` and `tf_netvlad SUB --help` are instant.
"""

import argparse
import logging
import os
import sys

from tf_netvlad.cli import demo, evaluate, export, flags, model, pretrained, retrieval, train
from tf_netvlad.cli.flags import CommandError

# The environment variable that sets --cpu-streams' default (the test suite sets it to 1).
STREAMS_VARIABLE = "TF_NETVLAD_CPU_STREAMS"

# Each group module adds its subcommands, in this order in --help: from the demo to deployment.
GROUPS = (demo, train, model, pretrained, evaluate, export, retrieval)


def build_parser():
    """The `tf_netvlad` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tf_netvlad", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="NetVLAD place recognition with Keras 3 / TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--cpu-streams", type=_streams_flag, default=os.environ.get(STREAMS_VARIABLE, "auto"),
        metavar="auto|N",
        help="run each batch of images as N independent parts side by side, each op on cores // N "
             "threads (models.streams); 'auto' is 2 on a CPU-only host with 2 or more cores, 1 keeps "
             f"TensorFlow's own threading; the default can be set with {STREAMS_VARIABLE}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(subparsers)
    return parser


def _streams_flag(value):
    from tf_netvlad.models.streams import parse_streams  # NumPy-free, TensorFlow-free

    try:
        return parse_streams(value)
    except ValueError as err:  # the value may come from the environment: name both
        raise argparse.ArgumentTypeError(f"{err} (given by --cpu-streams or {STREAMS_VARIABLE})") from None


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


# Library error hints name Python arguments; the command line shows its own flag instead. A
# command without a way to skip unreadable images (init, fit-whitening, evaluate-map, ...) drops
# the hint.
_LIBRARY_SKIP_HINTS = ("use on_error='skip'", "train with on_bad_image='skip'")
_CLI_SKIP_HINTS = {"train": "train with --on-bad-image skip", "evaluate": "run without --strict",
                   "index": "run without --strict", "localize": "run without --strict"}


def cli_message(args, error):
    """The text of `error` as the `tf_netvlad COMMAND` user needs it: library hints such as
    `on_error='skip'` become the command's flag (`--on-bad-image skip`, or no `--strict`); a hint
    that the command line cannot follow (no `--strict` was given, the step cannot skip) is dropped."""
    message = str(error)
    hint = _CLI_SKIP_HINTS.get(args.command)
    if hint == "run without --strict" and getattr(args, "on_error", None) != "raise":
        hint = None  # e.g. the k-means init of `evaluate --backbone`, which never skips
    for library_hint in _LIBRARY_SKIP_HINTS:
        if hint is None:
            message = message.replace(f", or {library_hint}", "")
        message = message.replace(library_hint, hint or "skip the file")
    return message


def main(argv=None):
    """Runs `tf_netvlad` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    A bad flag value exits through argparse (status 2, with the usage); an error a handler raises
    is printed as one line (status 2; `--debug` shows the traceback instead).
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if getattr(args, "check", None) is not None:
            args.check(args)  # outputs and numbers: before TensorFlow, a download or a model load
        flags.check_inputs(args)  # then a missing --dataset, --val, --images ...: before TensorFlow
        if args.needs_tensorflow:
            if not args.verbose:
                import_tensorflow_quietly()
            from tf_netvlad.models.streams import configure_streams

            configure_streams(args.cpu_streams)  # before any TensorFlow work: it sets the thread pools
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, RuntimeError, OSError, ImportError) as err:
        if args.debug:
            raise
        print(f"tf_netvlad {args.command}: error: {cli_message(args, err)}", file=sys.stderr)
        return 2
