"""`tf_netvlad init`, `fit-whitening` and `convert` (`tf_netvlad.cli.model`)."""

import inspect
import json

import numpy as np

from tf_netvlad import defaults
from tf_netvlad.cli import main
from tf_netvlad.models.model_files import load_model


def test_init_then_evaluate_then_whiten(tiny_demo, tmp_path, capsys):
    model_path = tmp_path / "init.keras"
    test_mat = str(tiny_demo["test_mat"])
    assert main.main(["init", "--dataset", test_mat, "--backbone", "tiny", "--num-clusters", "4",
                     "--num-images", "20", "--per-image", "30", "--niter", "10",
                     "--out", str(model_path)]) == 0
    assert "assignment ratio 100.0" in capsys.readouterr().out
    model = load_model(model_path)
    assert model.output_shape == (None, 4 * 64)

    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main.main(["evaluate", "--dataset", test_mat, "--model", str(model_path), "--json",
                     str(out_json), "--plot", str(out_png), "--recall-ns", "1,5"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    assert set(results) >= {"recall@1", "recall@5", "num_queries", "num_db"}
    assert 0.0 <= results["recall@1"] <= results["recall@5"] <= 1.0
    assert f"{100 * results['recall@1']:.2f}%" in printed
    assert out_png.stat().st_size > 1000

    whitened = tmp_path / "white.keras"
    assert main.main(["fit-whitening", "--dataset", test_mat, "--model", str(model_path), "--dim", "16",
                     "--out", str(whitened)]) == 0
    white = load_model(whitened)
    assert white.output_shape == (None, 16)
    image = np.random.default_rng(0).random((1, 96, 128, 3)).astype("float32") * 255
    np.testing.assert_allclose(np.linalg.norm(white(image), axis=1), 1.0, atol=1e-5)


def test_existing_output_is_not_overwritten(tiny_demo, tmp_path, capsys):
    target = tmp_path / "m.keras"
    target.write_text("keep me")
    assert main.main(["init", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
                     "--out", str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_init_and_fit_whitening_defaults_come_from_the_defaults_module():
    parser = main.build_parser()
    init = parser.parse_args(["init", "--dataset", "d.mat", "--out", "m.keras"])
    assert (init.num_images, init.per_image, init.niter) == (
        defaults.INIT_IMAGES, defaults.INIT_PER_IMAGE, defaults.KMEANS_NITER)
    assert (init.batch_size, init.seed, init.num_clusters, init.variant) == (
        defaults.EXTRACT_BATCH_SIZE, defaults.SEED, defaults.NUM_CLUSTERS, defaults.DEFAULT_VARIANT)
    assert init.backbone == "vgg16" and init.weights is None and init.image_size is None
    white = parser.parse_args(["fit-whitening", "--dataset", "d.mat", "--model", "m.keras",
                               "--out", "w.keras", "--image-size", "48x64"])
    assert white.max_images == defaults.WHITEN_MAX_IMAGES and white.image_size == (48, 64)
    # one default for the whitened dimension: the library's (the paper's 4096-D)
    from tf_netvlad.models.initialization import fit_whitening

    library_default = inspect.signature(fit_whitening).parameters["num_components"].default
    assert white.dim == library_default == defaults.WHITEN_COMPONENTS == 4096


def test_convert_needs_exactly_one_source(tmp_path, capsys):
    assert main.main(["convert", "--out", str(tmp_path / "m.keras")]) == 2
    assert "exactly one of --matconvnet" in capsys.readouterr().err


def _broken_model_files(folder, good):
    """Broken `.keras` files made from a good one. The archive layout (a zip of `config.json`,
    `metadata.json` and `model.weights.h5`) is Keras's: keras-team/keras keras/src/saving/saving_lib.py
    (`_CONFIG_FILENAME`, `_METADATA_FILENAME`, `_VARS_FNAME_H5`)."""
    import zipfile

    data = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    assert sorted(members) == ["config.json", "metadata.json", "model.weights.h5"]

    def rezip(name, **changes):
        path = folder / name
        with zipfile.ZipFile(path, "w") as archive:
            for member, content in {**members, **changes}.items():
                if content is not None:
                    archive.writestr(member, content)
        return path

    weights = members["model.weights.h5"]
    files = {
        "empty.keras": "the file is empty (0 bytes)",
        "random.keras": "it is not a zip archive",
        "truncated.keras": "the zip archive is truncated or damaged",
        "legacy.keras": "it is an HDF5 file",
    }
    (folder / "empty.keras").write_bytes(b"")
    (folder / "random.keras").write_bytes(np.random.default_rng(0).bytes(2048))
    (folder / "truncated.keras").write_bytes(data[: len(data) // 2])
    (folder / "legacy.keras").write_bytes(weights)  # an HDF5 file renamed
    rezip("garbled_weights.keras", **{"model.weights.h5": np.random.default_rng(1).bytes(len(weights))})
    files["garbled_weights.keras"] = "its weights (model.weights.h5) are corrupt: not an HDF5 file"
    rezip("cut_weights.keras", **{"model.weights.h5": weights[: len(weights) // 2]})
    files["cut_weights.keras"] = "its weights are corrupt or truncated"
    rezip("no_config.keras", **{"config.json": None})
    files["no_config.keras"] = "holds no config.json"
    rezip("no_weights.keras", **{"model.weights.h5": None})
    files["no_weights.keras"] = "the weights are missing"
    rezip("bad_json.keras", **{"config.json": b"{not json"})
    files["bad_json.keras"] = "its config.json is not valid JSON"
    # one byte flipped inside the stored weights: the archive's CRC no longer matches
    crc = bytearray(rezip("crc.keras").read_bytes())
    with zipfile.ZipFile(folder / "crc.keras") as archive:
        info = archive.getinfo("model.weights.h5")
    assert info.compress_type == zipfile.ZIP_STORED
    crc[info.header_offset + 30 + len(info.filename) + len(info.extra) + len(weights) // 2] ^= 0xFF
    (folder / "crc.keras").write_bytes(bytes(crc))
    files["crc.keras"] = "the archive member model.weights.h5 is corrupt (CRC mismatch)"
    (folder / "dir.keras").mkdir()
    files["dir.keras"] = "is a directory, not a .keras model file"
    return files


def test_every_broken_model_file_is_one_line_naming_file_and_cause(tiny_demo, tiny_model, tmp_path, capsys):
    """Regression: an existing but broken .keras said "File not found", corrupt weights said
    "file signature not found" without a path."""
    import keras

    from tf_netvlad.models.model_files import save_model

    good = tmp_path / "good.keras"
    save_model(tiny_model, good)
    files = _broken_model_files(tmp_path, good)
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp_path / "foreign.keras")
    files["foreign.keras"] = "holds a Sequential, not a tf_netvlad NetVLADModel"
    for name, cause in files.items():
        out = tmp_path / "w.keras"
        argv = ["fit-whitening", "--dataset", str(tiny_demo["test_mat"]), "--model", str(tmp_path / name),
                "--dim", "4", "--out", str(out)]
        assert main.main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / name}" in err and cause in err, (name, err)
        assert not out.exists()
