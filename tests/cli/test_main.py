"""The command line: fast --help without TensorFlow, init/evaluate/fit-whitening end to end."""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from tf_netvlad.cli import main
from tf_netvlad.models.model import load_model


def test_help_is_fast_and_does_not_import_tensorflow():
    code = (
        "import sys, tf_netvlad.cli.main as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
    assert "evaluate" in out.stdout and "demo-data" in out.stdout


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


def test_evaluate_off_the_shelf_with_backbone(tiny_demo, tmp_path):
    out_json = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
                     "--num-clusters", "4", "--json", str(out_json)]) == 0
    assert 0.0 <= json.loads(out_json.read_text())["recall@1"] <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--dataset", "missing.mat", "--backbone", "tiny"], "missing.mat"),
        (["init", "--dataset", "{test_mat}", "--backbone", "tiny", "--num-clusters", "4096",
          "--num-images", "2", "--per-image", "2", "--out", "{tmp}/m.keras"], "num_clusters=4096"),
        (["evaluate", "--dataset", "{test_mat}"], "exactly one of --model"),
        (["evaluate", "--dataset", "{test_mat}", "--model", "{tmp}/nope.keras"], "not found"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_output(tiny_demo, tmp_path, capsys, argv, message):
    argv = [a.format(test_mat=tiny_demo["test_mat"], tmp=tmp_path) for a in argv]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.keras").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_existing_output_is_not_overwritten(tiny_demo, tmp_path, capsys):
    target = tmp_path / "m.keras"
    target.write_text("keep me")
    assert main.main(["init", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
                     "--out", str(target)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_text() == "keep me"


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


def test_dataset_without_queries_is_refused(tmp_path, capsys):
    from tf_netvlad.data.places import PlaceSplit
    from tf_netvlad.data.split_files import write_mat

    split = PlaceSplit(name="empty", db_paths=["a.jpg", "b.jpg"], db_utm=np.zeros((2, 2)),
                       query_paths=[], query_utm=np.zeros((0, 2)))
    write_mat(split, tmp_path / "empty.mat")
    assert main.main(["evaluate", "--dataset", str(tmp_path / "empty.mat"), "--backbone", "tiny"]) == 2
    assert "has no queries" in capsys.readouterr().err


def test_index_then_localize_database_images(tiny_demo, tmp_path, capsys):
    from tf_netvlad.data import places

    model_path = tmp_path / "m.keras"
    test_mat = str(tiny_demo["test_mat"])
    assert main.main(["init", "--dataset", test_mat, "--backbone", "tiny", "--num-clusters", "4",
                     "--num-images", "10", "--per-image", "30", "--out", str(model_path)]) == 0
    index_dir = tmp_path / "index"
    assert main.main(["index", "--model", str(model_path), "--dataset", test_mat, "--out", str(index_dir)]) == 0
    split = places.load_split(test_mat)
    assert f"({split.num_db} images" in capsys.readouterr().out
    queries = [str(tmp_path / "q0.jpg"), str(tmp_path / "q1.jpg")]
    for i, q in enumerate(queries):  # database images as queries: their own top-1
        Path(q).write_bytes((Path(split.root) / split.db_paths[i]).read_bytes())
    out_json, out_png = tmp_path / "loc.json", tmp_path / "loc.png"
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), *queries,
                     "--top-k", "3", "--json", str(out_json), "--plot", str(out_png)]) == 0
    results = json.loads(out_json.read_text())
    for i, result in enumerate(results):
        assert result["top"][0]["path"].endswith(split.db_paths[i])
        np.testing.assert_allclose(result["estimated_position"], split.db_utm[i], atol=25)
    assert out_png.stat().st_size > 1000
    # An unreadable query is reported and skipped; the others are still localised; exit 1.
    missing = str(tmp_path / "missing.jpg")
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), queries[0],
                     missing, "--json", str(out_json)]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: not localised, file does not exist" in captured.out
    assert "1 of 2 query images could not be read" in captured.err
    results = json.loads(out_json.read_text())
    assert results[0]["top"][0]["path"].endswith(split.db_paths[0]) and results[1]["top"] == []
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), missing,
                     "--strict"]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    # --gt-dataset: a split image is marked; one that is not in the split is localised unmarked
    in_split = str(Path(split.root) / split.db_paths[0])
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), in_split,
                     queries[1], "--gt-dataset", test_mat, "--json", str(out_json)]) == 0
    assert f"{queries[1]} is not in --gt-dataset" in capsys.readouterr().err
    results = json.loads(out_json.read_text())
    assert results[0]["top1_correct"] is True and results[0]["gt_position"] == list(split.db_utm[0])
    assert results[1]["top1_correct"] is None and results[1]["top"][0]["path"].endswith(split.db_paths[1])
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), queries[1],
                     "--gt-dataset", test_mat, "--strict"]) == 2
    assert "q1.jpg' is not among" in capsys.readouterr().err


def _run_quiet_import(tmp_path, module_body):
    """Runs cli.import_tensorflow_quietly() in a fresh process against a stand-in `tensorflow`."""
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "tensorflow.py").write_text(module_body)
    code = ("import sys; from tf_netvlad.cli import main as cli\n"
            "try:\n    cli.import_tensorflow_quietly()\n"
            "except ImportError as e:\n    print('raised', e)\n"
            "print('imported', 'tensorflow' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.getcwd()]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)


def test_tensorflow_startup_notices_are_filtered_but_real_messages_kept(tmp_path):
    noisy = (
        "import os\n"
        "for line in ('WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR', 'I0000 port.cc:153] oneDNN custom operations are on.', "
        "'I0000 cpu_feature_guard.cc:227] This TensorFlow binary is optimized', "
        "'To enable the following instructions: AVX2 FMA, in other operations', "
        "'W0000 some_op.cc:1] a real warning'):\n"
        "    os.write(2, (line + '\\n').encode())\n"
    )
    done = _run_quiet_import(tmp_path, noisy)
    assert done.stdout.strip() == "imported True"
    assert done.stderr == "W0000 some_op.cc:1] a real warning\n"
    # A failing import keeps everything it printed and raises.
    failing = noisy + "raise ImportError('libcudart.so.12: cannot open shared object file')\n"
    done = _run_quiet_import(tmp_path, failing)
    assert "raised libcudart.so.12" in done.stdout
    assert "oneDNN custom operations" in done.stderr and "a real warning" in done.stderr


def _write_tokyo247_mat(folder):
    """tokyo247.mat: 3 panoramas x 12 cutouts (32x32 PNGs, 100 m apart), 3 queries (640x800
    portrait / 800x600 landscape JPEGs: day, sunset, night) each at its own panorama."""
    from PIL import Image

    from tf_netvlad.data.places import PlaceSplit
    from tf_netvlad.data.split_files import write_mat

    rng = np.random.default_rng(0)
    (folder / "db").mkdir(parents=True)
    (folder / "q").mkdir()
    db_paths, query_paths = [], []
    for p in range(3):
        base = rng.integers(0, 256, (32, 32, 3))
        for j in range(12):
            pixels = np.clip(np.roll(base, 2 * j, axis=1) + rng.integers(-5, 6, base.shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / "db" / f"{p}_{j}.png")
            db_paths.append(f"db/{p}_{j}.png")
    for q in range(3):
        size = (800, 640) if q == 0 else (800, 600)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "q" / f"{q}.jpg")
        query_paths.append(f"q/{q}.jpg")
    db_utm = np.repeat(np.stack([np.arange(3) * 100.0, np.zeros(3)], axis=1), 12, axis=0)
    split = PlaceSplit("tokyo247", db_paths, db_utm, query_paths,
                       np.stack([np.arange(3) * 100.0 + 2, np.zeros(3)], axis=1))
    write_mat(split, folder / "tokyo247.mat")
    return folder / "tokyo247.mat"


def test_evaluate_tokyo247_with_approximate_index(tmp_path, capsys):
    mat = _write_tokyo247_mat(tmp_path / "tokyo")
    out_json = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", str(mat), "--backbone", "tiny", "--num-clusters", "4",
                     "--recall-ns", "1,2,3", "--approx-index", "IVF2,Flat", "--approx-nprobe", "2",
                     "--descriptor-dtype", "float16", "--memmap-dir", str(tmp_path / "mm"),
                     "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    assert results["protocol"] == "tokyo247" and results["query_image_size"] == "640"
    assert results["num_db"] == 36 and results["num_queries"] == 3
    assert results["recall@3"] == 1.0  # 3 panoramas after NMS: every query finds its own
    for condition in ("day", "sunset", "night"):
        assert results[f"num_queries/{condition}"] == 1
        assert results[f"recall@1/{condition}"] in (0.0, 1.0)
    # IVF2 visiting both cells with flat codes is exhaustive: the same recall as exact search.
    assert all(results[f"approx/recall@{n}"] == results[f"recall@{n}"] for n in (1, 2, 3))
    assert results["approx_index"] == "IVF2,Flat" and results["approx_train_size"] == 36
    header = next(line for line in printed.splitlines() if line.split()[:1] == ["N"])
    assert "day" in header and "night" in header and "approx" in header
    assert "protocol tokyo247" in printed and not os.listdir(tmp_path / "mm")

    # The default IVF-PQ cannot be trained on 36 images: one clear line, exit 2.
    assert main.main(["evaluate", "--dataset", str(mat), "--backbone", "tiny", "--num-clusters", "4",
                     "--approx-index", "--protocol", "pitts"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 624 database vectors" in err and "has 36" in err and "Traceback" not in err


def test_train_multi_worker_builds_the_strategy_from_tf_config(tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    from tf_netvlad.training import train

    made, trained = [], []

    def fake_strategy(communication_options):
        made.append(communication_options.implementation)
        return "the-strategy"

    def fake_train(*args, **kwargs):
        trained.append(kwargs)
        return {"status": "completed", "epochs_done": 0, "wall_time_s": 0.0, "files": {}}

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", fake_strategy)
    monkeypatch.setattr(train, "train", fake_train)
    argv = ["train", "--dataset", "x.mat", "--out", str(tmp_path / "run"), "--multi-worker"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main.main(argv) == 2
    assert "--multi-worker needs TF_CONFIG" in capsys.readouterr().err and not made
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert main.main(argv) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert main.main(argv + ["--communication", "ring", "--batch-size", "8"]) == 0
    assert made == [tf.distribute.experimental.CommunicationImplementation.RING]
    assert trained[0]["strategy"] == "the-strategy" and trained[0]["config"].batch_size == 8
    assert main.main(argv[:-1]) == 0  # without --multi-worker: no strategy
    assert trained[1]["strategy"] is None and len(made) == 1
