"""`tf_netvlad` command line: the entry point of the console script.

The parser is `tf_netvlad.cli.parser`, the subcommand handlers `tf_netvlad.cli.commands`.
TensorFlow is imported only after parsing (quietly) and inside the handlers, so
`tf_netvlad --help` is instant.
"""

import logging
import os
import sys

from tf_netvlad.cli.commands import CommandError
from tf_netvlad.cli.parser import build_parser


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
