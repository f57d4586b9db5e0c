"""`tf_netvlad export` (`tf_netvlad.cli.export`)."""

import inspect

from tf_netvlad.cli import main


def test_export_command_writes_versions_and_onnx(tiny_demo, tmp_path, capsys):
    model_path = tmp_path / "m.keras"
    assert main.main(["init", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
                     "--num-clusters", "4", "--num-images", "10", "--per-image", "30",
                     "--out", str(model_path)]) == 0
    base = tmp_path / "saved" / "demo"
    argv = ["export", "--model", str(model_path), "--saved-model", str(base), "--image-size", "48x64",
            "--no-warmup"]
    assert main.main(argv + ["--onnx", str(tmp_path / "m.onnx")]) == 0
    assert main.main(argv) == 0
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["1", "2"]
    assert (base / "1" / "saved_model.pb").exists() and (tmp_path / "m.onnx").stat().st_size > 0
    capsys.readouterr()
    assert main.main(argv + ["--version", "1"]) == 2
    assert "exists" in capsys.readouterr().err


def test_export_image_size_default_is_the_library_default():
    from tf_netvlad.export.saved_model import export_saved_model

    library = inspect.signature(export_saved_model).parameters["image_size"].default
    args = main.build_parser().parse_args(["export", "--model", "m.keras", "--saved-model", "s"])
    assert args.image_size == library == (480, 640) and not args.overwrite


def test_export_needs_a_destination(capsys):
    assert main.main(["export", "--model", "m.keras"]) == 2
    assert "Pass --saved-model DIR and/or --onnx FILE.onnx." in capsys.readouterr().err
