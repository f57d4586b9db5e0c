"""`tf_netvlad demo-data` and `tf_netvlad demo`: the generated street-like demo dataset (in the
configuration the CPU recipe was tuned on, or a held-out one), and the whole pipeline run on it
(k-means init, CPU-recipe training, evaluation, export) by `tf_netvlad.demo`.
"""

import argparse
import os
import re

from tf_netvlad.cli import flags
from tf_netvlad.defaults import SEED
from tf_netvlad.training.config import CPU_RECIPE

# `tf_netvlad.demo.configs.CONFIGS` names and what they are for; repeated here (and checked equal
# by the tests) so that `--help` does not import the generator.
CONFIG_HELP = {
    "demo": "the demo dataset the CPU recipe was tuned on: 700 db / 2,500 training queries, 96x128",
    "small": "held out, not used for tuning: 2,000 db / 400 training queries, 180x240, rain and "
             "fog, 1.3x viewpoint change",
    "other": "held out, not used for tuning: 1,200 db / 1,200 training queries, a db image every "
             "4 m, 120x160, darker and foggier, 1.2x viewpoint change",
}
# Help suffix of a flag whose unset value (None) means "the preset's": "%(default).0s" prints
# nothing but stops the help formatter from appending "(default: None)".
_PRESET = " (default: the preset's)%(default).0s"
# library argument -> flag, to name the flag in the errors of `configs.resolve_params`
_FLAGS = {"seed": "--seed", "image_size": "--image-size", "scale": "--scale",
          "db_spacing_m": "--db-spacing", "viewpoint": "--viewpoint", "conditions": "--conditions",
          **{f"{s}_{w}": f"--{s}-{w}" for s in ("train", "val", "test") for w in ("db", "queries")}}


def add_commands(subparsers):
    """Adds `demo` and `demo-data`."""
    p = flags.add_command(subparsers, "demo", run_demo, "The main job: generated data, k-means init, "
                          "train (bounded time), evaluate, export; prints recall@N of raw-pixel "
                          "thumbnails, the k-means init and the trained model on the test split.")
    p.add_argument("--config", choices=tuple(CONFIG_HELP), default="demo",
                   help="the generated dataset (as `tf_netvlad demo-data --config`): "
                        + "; ".join(f"{k}: {v}" for k, v in CONFIG_HELP.items()))
    p.add_argument("--data", help="dataset folder, generated if absent, reused if it holds the same "
                                  "dataset (default: demo_data, or demo_data_CONFIG for another "
                                  "--config)%(default).0s")
    p.add_argument("--run-dir", help="training run folder; a run in it is resumed (default: runs/demo, "
                                     "or runs/demo_CONFIG)%(default).0s")
    p.add_argument("--saved-model", help="SavedModel base directory, the next version is written "
                                         "(default: saved_models/tiny_netvlad_demo, or "
                                         "saved_models/tiny_netvlad_demo_CONFIG)%(default).0s")
    p.add_argument("--minutes", type=flags.positive_float, default=CPU_RECIPE["time_limit_s"] / 60,
                   help="training time limit")
    p.add_argument("--epochs", type=flags.positive_int,
                   help=f"refresh cycles (default: the CPU recipe's, {CPU_RECIPE['epochs']}; the time "
                        "limit usually stops the run first)%(default).0s")
    p.add_argument("--scale", type=flags.positive_float, default=1.0,
                   help="dataset scale (multiplies its sizes; e.g. 0.1 for a quick run)")
    p.add_argument("--seed", type=_non_negative_int, default=None,
                   help=f"dataset seed; the training seed is this plus {SEED}" + _PRESET)
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --run-dir")
    p.set_defaults(check=check_demo_outputs)

    p = flags.add_command(subparsers, "demo-data", generate_demo_data,
                          "Generate a street-like place-recognition dataset: the demo's, a held-out "
                          "configuration, or your own mix of sizes and conditions.", tensorflow=False)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(check=lambda args: flags.check_output(args.out, "--out", directory=True))
    p.add_argument("--config", choices=tuple(CONFIG_HELP), default="demo",
                   help="preset; every other flag overrides it. "
                        + "; ".join(f"{k}: {v}" for k, v in CONFIG_HELP.items()))
    p.add_argument("--seed", type=_non_negative_int, default=None,
                   help="generator seed (towns, queries, conditions)" + _PRESET)
    p.add_argument("--scale", type=flags.positive_float, default=1.0,
                   help="multiplies the preset's street lengths / database sizes and query counts "
                        "(e.g. 0.1 for a quick test); the --*-db / --*-queries counts are not scaled")
    # Not the resize policy of --image-size elsewhere: the size the images are rendered at.
    p.add_argument("--image-size", type=flags.positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="rendered image height and width in pixels; the demo's is the CPU recipe's "
                        f"{CPU_RECIPE['image_size'][0]} {CPU_RECIPE['image_size'][1]}" + _PRESET)
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}-db", type=flags.positive_int, metavar="N",
                       help=f"database images of the {split} town" + _PRESET)
        p.add_argument(f"--{split}-queries", type=flags.positive_int, metavar="N",
                       help=f"queries of the {split} town" + _PRESET)
    p.add_argument("--db-spacing", type=float, metavar="M",
                   help="metres between database images along a street, at most 10" + _PRESET)
    p.add_argument("--conditions", type=_conditions, metavar="MIX",
                   help="query condition mix: a named mix (demo, weather, dark, clear) or "
                        "token[:weight] items that replace the preset's weights of their group, e.g. "
                        "'day:0.5,night:0.5' or 'clear:0.8,fog:0.2,occluded:0.1'; groups: day/dusk/"
                        "night, summer/autumn/winter, clear/rain/fog (weights normalised per group), "
                        "occluded:P (a probability)" + _PRESET)
    p.add_argument("--workers", type=flags.positive_int, default=os.cpu_count() or 1,
                   help="processes rendering in parallel (the files do not depend on it)")
    p.add_argument("--viewpoint", type=float, metavar="F",
                   help="scales the spread of the query poses (lateral offset, height, yaw, pitch, "
                        "roll, zoom) around the database camera: 0 = none, 1 = the demo's, at most 2"
                        + _PRESET)


def demo_paths(args):
    """`(data, run_dir, saved_model)`: the flags given, else the --config's defaults."""
    from tf_netvlad.demo import run

    defaults = run.default_paths(args.config)
    return (defaults["data_dir"] if args.data is None else args.data,
            defaults["run_dir"] if args.run_dir is None else args.run_dir,
            defaults["saved_model_dir"] if args.saved_model is None else args.saved_model)


def check_demo_outputs(args):
    """Before TensorFlow: the folders `demo` writes must be writable, --data must not hold another
    dataset and --run-dir not a run trained on another dataset (`demo.run.check_demo_inputs`)."""
    from tf_netvlad.demo import run

    data, run_dir, saved = demo_paths(args)
    flags.check_output(data, "--data", directory=True)
    flags.check_output(run_dir, "--run-dir", directory=True)
    flags.check_output(saved, "--saved-model", directory=True)
    try:
        params = run.data_params(args.config, seed=args.seed, scale=args.scale)
    except ValueError as err:
        raise flags.CommandError(_flagged(str(err))) from None
    run.check_demo_inputs(data, run_dir, params, fresh=args.fresh)


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0. Received: {text!r}")
    return value


def _conditions(text):
    """Checks a --conditions value at parse time (unknown tokens, bad weights); returns it."""
    from tf_netvlad.demo import configs

    try:
        configs.parse_conditions(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _flagged(message):
    """Names the CLI flag after each library argument quoted in `message`."""
    return re.sub(r"`(\w+)`", lambda m: f"`{m.group(1)}` ({_FLAGS[m.group(1)]})"
                  if m.group(1) in _FLAGS else m.group(0), message)


def generate_demo_data(args):
    from tf_netvlad.demo import configs, dataset

    sizes = {f"{s}_{w}": getattr(args, f"{s}_{w}") for s in ("train", "val", "test")
             for w in ("db", "queries")}
    options = dict(config=args.config, seed=args.seed, scale=args.scale, image_size=args.image_size,
                   db_spacing_m=args.db_spacing, sizes=sizes, conditions=args.conditions,
                   viewpoint=args.viewpoint)
    try:
        configs.resolve_params(**options)  # every check before anything is written
    except ValueError as err:
        raise flags.CommandError(_flagged(str(err))) from None
    paths = dataset.generate_demo_data(args.out, workers=args.workers, **options)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def run_demo(args):
    from tf_netvlad.demo import run

    data, run_dir, saved = demo_paths(args)
    report = run.run_demo(data_dir=data, run_dir=run_dir, saved_model_dir=saved, minutes=args.minutes,
                          seed=args.seed, data_scale=args.scale, epochs=args.epochs, fresh=args.fresh,
                          config=args.config)
    print(run.format_report(report))
    return 0
