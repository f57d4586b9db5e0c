"""`tf_netvlad export`: a .keras model as a versioned TensorFlow Serving SavedModel and/or an ONNX
file (`tf_netvlad.export.saved_model`).
"""

from tf_netvlad.cli import flags, pretrained
from tf_netvlad.data.image_size import format_image_size
from tf_netvlad.defaults import PAPER_IMAGE_SIZE


def add_commands(subparsers):
    """Adds `export`."""
    p = flags.add_command(subparsers, "export", export, "Export a .keras model as a versioned "
                          "SavedModel for TensorFlow Serving and/or ONNX.")
    flags.add_model_file(p)
    p.add_argument("--saved-model", help="base directory; the export goes to <DIR>/<version>/")
    p.add_argument("--version", type=flags.positive_int, help="version number (default: next free integer)")
    flags.add_overwrite(p, "replace an existing version / ONNX file")
    flags.add_image_size(p, default=format_image_size(PAPER_IMAGE_SIZE),
                         help="resize policy of the serve_bytes signature: 'HxW', a max side, or 'keep'")
    p.add_argument("--dim", type=flags.positive_int, help="keep the first DIM whitened outputs (+ re-L2)")
    p.add_argument("--model-name", help="model name in models.config and warmup requests "
                   "(default: the directory name)")
    p.add_argument("--no-warmup", action="store_true", help="do not write the warmup requests")
    p.add_argument("--onnx", help="also write an ONNX file (float image input) here")
    p.set_defaults(check=check_outputs)


def check_outputs(args):
    """--saved-model and --onnx, refused before the model is loaded if they cannot be written."""
    if not (args.saved_model or args.onnx):
        raise flags.CommandError("Pass --saved-model DIR and/or --onnx FILE.onnx.")
    flags.check_output(args.saved_model, "--saved-model", directory=True)
    flags.check_output(args.onnx, "--onnx", (".onnx",))
    flags.refuse_existing(args.onnx, args.overwrite)


def export(args):
    from tf_netvlad.export import saved_model

    if not (args.saved_model or args.onnx):
        raise flags.CommandError("Pass --saved-model DIR and/or --onnx FILE.onnx.")
    if args.onnx:
        flags.refuse_existing(args.onnx, args.overwrite)
    pretrained.resolve_model_flag(args)
    if args.saved_model:
        path = saved_model.export_saved_model(
            args.model, args.saved_model, version=args.version, overwrite=args.overwrite,
            image_size=args.image_size, descriptor_dim=args.dim, model_name=args.model_name,
            warmup=not args.no_warmup,
        )
        print(f"SavedModel: {path}")
    if args.onnx:
        saved_model.export_onnx(args.model, args.onnx, descriptor_dim=args.dim)
        print(f"ONNX: {args.onnx}")
    return 0
