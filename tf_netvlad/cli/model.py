"""`tf_netvlad init`, `fit-whitening` and `convert`: the commands that write a .keras model file
(k-means initialisation and PCA-whitening by `tf_netvlad.models.initialization`, official weights by
`tf_netvlad.convert`).
"""

from tf_netvlad.cli import flags, pretrained
from tf_netvlad.defaults import (
    DEFAULT_VARIANT,
    INIT_IMAGES,
    INIT_PER_IMAGE,
    KMEANS_NITER,
    NETVLAD_VARIANTS,
    WHITEN_COMPONENTS,
    WHITEN_MAX_IMAGES,
)
from tf_netvlad.training.config import TrainConfig


def add_commands(subparsers):
    """Adds `init`, `fit-whitening` and `convert`."""
    p = flags.add_command(subparsers, "init", init,
                          "Build a model and initialise NetVLAD by k-means on database images.")
    flags.add_extraction_flags(p, "dbStruct .mat, CSV manifest or @-named image folder")
    flags.add_backbone_flags(p, backbone=TrainConfig().backbone)
    p.add_argument("--variant", choices=NETVLAD_VARIANTS, default=DEFAULT_VARIANT,
                   help="v1: official models (w = a*c_hat); v2: the paper (w = 2a*c, b = -a|c|^2)")
    p.add_argument("--num-images", type=flags.positive_int, default=INIT_IMAGES,
                   help="database images sampled for k-means")
    p.add_argument("--per-image", type=flags.positive_int, default=INIT_PER_IMAGE,
                   help="local features sampled per image")
    p.add_argument("--niter", type=flags.positive_int, default=KMEANS_NITER, help="k-means iterations")
    _add_model_out(p)

    p = flags.add_command(subparsers, "fit-whitening", fit_whitening,
                          "Fit PCA-whitening on database descriptors and append it to a model.")
    flags.add_extraction_flags(p, "dataset whose database images are used (the training split, as "
                                  "the paper)")
    flags.add_model_file(p, "input .keras model")
    p.add_argument("--dim", type=flags.positive_int, default=WHITEN_COMPONENTS,
                   help="whitened output dimension, at most min(descriptor dim, images - 1)")
    p.add_argument("--max-images", type=flags.positive_int, default=WHITEN_MAX_IMAGES,
                   help="at most this many database images")
    _add_model_out(p)

    p = flags.add_command(subparsers, "convert", convert,
                          "Convert official MatConvNet or PyTorch NetVLAD weights.")
    p.add_argument("--matconvnet", help="struct-form MatConvNet .mat (e.g. Pitts30K_struct.mat)")
    p.add_argument("--pytorch", help="pytorch-NetVlad / Patch-NetVLAD checkpoint (.pth.tar)")
    p.add_argument("--arch", choices=("vgg16", "alexnet"), help="encoder of a PyTorch checkpoint "
                   "(default: detected from its keys)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="load the checkpoint with torch's full pickle loader (only for trusted files)")
    _add_model_out(p)


def _add_model_out(parser):
    parser.add_argument("--out", required=True, help="output model file (.keras)")
    flags.add_overwrite(parser)
    parser.set_defaults(check=check_model_out)


def check_model_out(args):
    """--out of `init` / `fit-whitening` / `convert` (and fit-whitening's --dim against
    --max-images), refused before any work."""
    flags.check_output(args.out, "--out", (".keras",))
    flags.refuse_existing(args.out, args.overwrite)
    if getattr(args, "max_images", None) is not None and args.dim >= args.max_images:
        raise flags.CommandError(
            f"--dim {args.dim} needs at least {args.dim + 1} database images (PCA of n images has "
            f"n - 1 components), but --max-images is {args.max_images}.")


def init(args):
    from tf_netvlad.models import initialization, model_files

    flags.refuse_existing(args.out, args.overwrite)
    split = flags.load_dataset(args.dataset, args.root, args.db_root, args.query_root, parts=("db",))
    model, stats = initialization.init_model(
        split, root=args.root, backbone=args.backbone, weights=args.weights,
        num_clusters=args.num_clusters, variant=args.variant, image_size=args.image_size,
        num_images=args.num_images, per_image=args.per_image, niter=args.niter, seed=args.seed,
        batch_size=args.batch_size,
    )
    model_files.save_model(model, args.out)
    print(f"k-means init: {stats['num_descriptors']} descriptors, alpha={stats['alpha']:.2f}, "
          f"top-1/top-2 assignment ratio {stats['assignment_ratio']:.1f}")
    print(f"model: {args.out}")
    return 0


def fit_whitening(args):
    from tf_netvlad.models import initialization, model_files

    flags.refuse_existing(args.out, args.overwrite)
    split = flags.load_dataset(args.dataset, args.root, args.db_root, args.query_root, parts=("db",))
    if args.dim >= len(split.db_paths):
        raise flags.CommandError(
            f"--dim {args.dim} needs at least {args.dim + 1} database images (PCA of n images has "
            f"n - 1 components), but {args.dataset} has {len(split.db_paths)}.")
    pretrained.resolve_model_flag(args)
    model = model_files.load_model(args.model, compile=False)
    if args.dim > model.descriptor_dim:
        raise flags.CommandError(f"--dim {args.dim} is larger than the {model.descriptor_dim}-D "
                                 f"descriptors of {args.model}.")
    model = initialization.fit_whitening(
        model, split.db_paths, root=split.root,
        image_size=args.image_size, num_components=args.dim, max_images=args.max_images,
        seed=args.seed, batch_size=args.batch_size,
    )
    model_files.save_model(model, args.out)
    print(f"whitened model ({args.dim}-D): {args.out}")
    return 0


def convert(args):
    from tf_netvlad.convert.matconvnet import convert_matconvnet
    from tf_netvlad.convert.pytorch import convert_pytorch

    if bool(args.matconvnet) == bool(args.pytorch):
        raise flags.CommandError("Pass exactly one of --matconvnet FILE.mat or --pytorch CHECKPOINT.")
    flags.refuse_existing(args.out, args.overwrite)
    if args.matconvnet:
        model = convert_matconvnet(args.matconvnet, out_path=args.out)
    else:
        model = convert_pytorch(args.pytorch, out_path=args.out, arch=args.arch,
                                weights_only=not args.unsafe_load)
    print(f"converted {model.backbone_name} NetVLAD (K={model.num_clusters}, "
          f"{model.descriptor_dim}-D descriptors): {args.out}")
    return 0
