"""`tf_netvlad demo-data` and `tf_netvlad demo`: the generated street-like demo dataset, and the whole
pipeline run on it (k-means init, CPU-recipe training, evaluation, export) by `tf_netvlad.demo`.
"""

from tf_netvlad.cli import flags
from tf_netvlad.training.config import CPU_RECIPE


def add_commands(subparsers):
    """Adds `demo` and `demo-data`."""
    p = flags.add_command(subparsers, "demo", run_demo, "The main job: demo data, k-means init, train "
                          "(bounded time), evaluate, export; prints a before/after recall@N table.")
    p.add_argument("--data", default="demo_data", help="demo dataset folder (generated if absent)")
    p.add_argument("--run-dir", default="runs/demo", help="training run folder")
    p.add_argument("--saved-model", default="saved_models/tiny_netvlad_demo",
                   help="SavedModel base directory (the next version is written)")
    p.add_argument("--minutes", type=float, default=CPU_RECIPE["time_limit_s"] / 60,
                   help="training time limit")
    p.add_argument("--epochs", type=int, help="refresh cycles (default: the CPU recipe's)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset scale")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --run-dir")

    p = flags.add_command(subparsers, "demo-data", generate_demo_data,
                          "Generate the small street-like demo dataset.", tensorflow=False)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies street lengths and query counts (e.g. 0.1 for a quick test)")
    # Not the resize policy of --image-size elsewhere: the size the images are rendered at (the
    # CPU recipe's, which trains on them).
    p.add_argument("--image-size", type=int, nargs=2, default=CPU_RECIPE["image_size"],
                   metavar=("H", "W"), help="image height and width in pixels")


def generate_demo_data(args):
    from tf_netvlad.demo import dataset

    paths = dataset.generate_demo_data(args.out, seed=args.seed, scale=args.scale,
                                       image_size=tuple(args.image_size))
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def run_demo(args):
    from tf_netvlad.demo import run

    report = run.run_demo(data_dir=args.data, run_dir=args.run_dir, saved_model_dir=args.saved_model,
                          minutes=args.minutes, seed=args.seed, data_scale=args.scale,
                          epochs=args.epochs, fresh=args.fresh)
    print(run.format_report(report))
    return 0
