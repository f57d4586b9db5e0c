"""The `tf_netvlad` command: the entry point `main(argv)` of the console script and `python -m tf_netvlad`.

Builds the top-level parser (--debug, --verbose) with every subcommand group's parser, sets up
logging, imports TensorFlow quietly once the arguments are parsed, runs the subcommand's handler and
maps its errors to one line on stderr and exit status 2. Building the parsers imports no TensorFlow,
so `tf_netvlad --help` and `tf_netvlad SUB --help` are instant.
"""

import argparse
import logging
import os
import sys

from tf_netvlad.cli import demo, evaluate, export, model, retrieval, train
from tf_netvlad.cli.flags import CommandError

# Each group module adds its subcommands, in this order in --help: from the demo to deployment.
GROUPS = (demo, train, model, evaluate, export, retrieval)


def build_parser():
    """The `tf_netvlad` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tf_netvlad", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="NetVLAD place recognition with Keras 3 / TensorFlow.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(subparsers)
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
    """Runs `tf_netvlad` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    A bad flag value exits through argparse (status 2, with the usage); an error a handler raises
    is printed as one line (status 2; `--debug` shows the traceback instead).
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.needs_tensorflow and not args.verbose:
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
