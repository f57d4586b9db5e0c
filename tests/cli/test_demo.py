"""`tf_netvlad demo-data` and `demo` (`tf_netvlad.cli.demo`)."""

import os
import subprocess
import sys

import pytest

from tf_netvlad.cli import demo as cli_demo
from tf_netvlad.cli import main
from tf_netvlad.training.config import CPU_RECIPE


def test_demo_defaults_come_from_the_cpu_recipe():
    from tf_netvlad.demo import configs

    parse = main.build_parser().parse_args
    data = parse(["demo-data", "--out", "d"])
    assert data.config == "demo" and data.image_size is None and data.needs_tensorflow is False
    # unset flags take the preset's values: the demo's images are the CPU recipe's size
    assert configs.resolve_params(config=data.config)["image_size"] == list(CPU_RECIPE["image_size"])
    assert tuple(cli_demo.CONFIG_HELP) == configs.config_names()
    demo = parse(["demo"])
    assert demo.minutes * 60 == CPU_RECIPE["time_limit_s"] and demo.epochs is None
    assert demo.needs_tensorflow is True


def test_demo_data_writes_the_dataset_without_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from tf_netvlad.cli import main\n"
        f"code = main.main(['demo-data', '--out', {str(tmp_path / 'data')!r}, '--scale', '0.01',\n"
        "                   '--image-size', '48', '64', '--conditions', 'clear:1,fog:1'])\n"
        "print('RESULT', code, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "RESULT 0 False"
    assert f"test_mat: {tmp_path / 'data' / 'demo_test.mat'}" in done.stdout
    from PIL import Image

    first = next((tmp_path / "data").rglob("*.jpg"))
    assert Image.open(first).size == (64, 48)
    conditions = (tmp_path / "data" / "demo_test.csv").read_text()
    assert ";fog" in conditions  # half of the queries in fog (5 test queries)


def test_demo_passes_its_flags_to_run_demo(monkeypatch, tmp_path, capsys):
    from tf_netvlad.demo import run

    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(run, "run_demo", lambda **kwargs: calls.append(kwargs) or {"k": 1})
    monkeypatch.setattr(run, "format_report", lambda report: f"report {report}")
    assert main.main(["demo", "--data", str(tmp_path / "d"), "--minutes", "0.5", "--epochs", "2",
                      "--fresh", "--seed", "3", "--scale", "0.2", "--config", "small"]) == 0
    assert calls == [dict(data_dir=str(tmp_path / "d"), run_dir="runs/demo_small",
                          saved_model_dir="saved_models/tiny_netvlad_demo_small", minutes=0.5, seed=3,
                          data_scale=0.2, epochs=2, fresh=True, config="small")]
    assert "report {'k': 1}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the checks create nothing


@pytest.mark.parametrize("config, data, run_dir, saved", [
    ("demo", "demo_data", "runs/demo", "saved_models/tiny_netvlad_demo"),  # as before --config
    ("small", "demo_data_small", "runs/demo_small", "saved_models/tiny_netvlad_demo_small"),
    ("other", "demo_data_other", "runs/demo_other", "saved_models/tiny_netvlad_demo_other"),
])
def test_demo_default_folders_are_per_configuration(monkeypatch, tmp_path, config, data, run_dir, saved):
    from tf_netvlad.demo import run

    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(run, "run_demo", lambda **kwargs: calls.append(kwargs) or {})
    monkeypatch.setattr(run, "format_report", lambda report: "")
    argv = ["demo"] + ([] if config == "demo" else ["--config", config])
    assert main.main(argv) == 0
    assert calls == [dict(data_dir=data, run_dir=run_dir, saved_model_dir=saved, minutes=10.0, seed=None,
                          data_scale=1.0, epochs=None, fresh=False, config=config)]
    assert run.default_paths(config) == dict(data_dir=data, run_dir=run_dir, saved_model_dir=saved)
    # the --help text names the scheme
    help_text = main.build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    assert "demo_data_CONFIG" in help_text and "runs/demo_CONFIG" in help_text


def test_demo_data_passes_every_flag(monkeypatch, tmp_path, capsys):
    from tf_netvlad.demo import dataset

    calls = []
    monkeypatch.setattr(dataset, "generate_demo_data",
                        lambda out, **kwargs: calls.append((out, kwargs)) or {"root": out})
    argv = ["demo-data", "--out", str(tmp_path / "d"), "--config", "small", "--seed", "3",
            "--scale", "0.5", "--image-size", "60", "80", "--train-db", "300", "--train-queries", "40",
            "--test-queries", "20", "--db-spacing", "5", "--conditions", "weather,night:1,occluded:0.2",
            "--viewpoint", "1.5", "--workers", "3"]
    assert main.main(argv) == 0
    sizes = dict(train_db=300, train_queries=40, val_db=None, val_queries=None, test_db=None,
                 test_queries=20)
    assert calls == [(str(tmp_path / "d"), dict(
        config="small", seed=3, scale=0.5, image_size=[60, 80], db_spacing_m=5.0, sizes=sizes,
        conditions="weather,night:1,occluded:0.2", viewpoint=1.5, workers=3))]
    assert f"root: {tmp_path / 'd'}" in capsys.readouterr().out
    # nothing given: every value is the preset's (None), the scale 1
    calls.clear()
    assert main.main(["demo-data", "--out", "x", "--config", "other"]) == 0
    assert calls[0][1] == dict(config="other", seed=None, scale=1.0, image_size=None, db_spacing_m=None,
                               sizes=dict.fromkeys(sizes), conditions=None, viewpoint=None,
                               workers=os.cpu_count() or 1)


@pytest.mark.parametrize("argv, message", [
    (["--viewpoint", "2.5"], "`viewpoint` (--viewpoint) must be in [0, 2]"),
    (["--db-spacing", "12"], "`db_spacing_m` (--db-spacing) must be in (0, 10]"),
    (["--train-db", "4"], "`train_db` (--train-db) must be an integer >= 10"),
    (["--image-size", "8", "8"], "`image_size` (--image-size) must be (H, W) with both >= 16"),
])
def test_demo_data_bad_values_are_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    assert main.main(["demo-data", "--out", str(tmp_path / "d")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tf_netvlad demo-data: error: ") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--conditions", "sunny"], "unknown token 'sunny'"),
    (["--train-queries", "0"], "must be a positive integer"),
    (["--seed", "-2"], "must be an integer >= 0"),
    (["--config", "large"], "invalid choice: 'large'"),
])
def test_demo_data_bad_flags_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["demo-data", "--out", str(tmp_path / "d")] + argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_folder_of_another_configuration(monkeypatch, tmp_path, capsys):
    import json

    from tf_netvlad.demo import run

    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(run, "run_demo", lambda **kwargs: calls.append(kwargs) or {})
    data = tmp_path / "held_out"
    data.mkdir()
    # the parameters `tf_netvlad demo-data --config small` records in manifest.json (its images are
    # not needed to refuse the folder)
    from tf_netvlad.demo import configs

    (data / "manifest.json").write_text(json.dumps(configs.resolve_params(config="small")))
    assert main.main(["demo", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err == (f"tf_netvlad demo: error: --data {data} holds the 'small' dataset (seed 11, scale 1), "
                   "not the 'demo' dataset (seed 0, scale 1) asked for: pass another --data folder, or "
                   "--config small --seed 11 --scale 1 to reuse it (Python: data_dir=, config=, seed=, "
                   "data_scale=).\n")
    # made with options `demo` does not take: train on it with `tf_netvlad train`
    (data / "manifest.json").write_text(json.dumps(configs.resolve_params(config="small", viewpoint=0.5)))
    assert main.main(["demo", "--data", str(data), "--config", "small"]) == 2
    err = capsys.readouterr().err
    assert (f"holds the 'small' dataset (seed 11, scale 1) with other demo-data options (--viewpoint), "
            "not the 'small' dataset (seed 11, scale 1) asked for: pass another --data folder, or train "
            f"on it with `tf_netvlad train --dataset {data / 'demo_train.mat'} ") in err
    assert len(err.splitlines()) == 1
    assert calls == [] and (data / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held_out"]


def test_demo_refusals_come_before_tensorflow_and_leave_nothing(tmp_path, tiny_demo):
    """--data of another configuration, and --run-dir holding a run trained on another dataset: one
    line each, exit status 2, TensorFlow never imported, no file made, changed or removed."""
    import json

    from tf_netvlad.demo import folder, run

    data = str(tiny_demo["root"])  # a real generated dataset: 'demo', seed 0, scale 0.01
    before = sorted(p.relative_to(data) for p in tiny_demo["root"].rglob("*"))
    stamp = os.stat(tiny_demo["manifest"]).st_mtime_ns
    # a run folder with a checkpoint, trained on the 'small' dataset (the record `run_demo` writes)
    trained = tmp_path / "trained"
    (trained / "last").mkdir(parents=True)
    (trained / "last" / "state.json").write_text("{}")
    (trained / run.RUN_RECORD).write_text(json.dumps({"data_params": run.data_params("small")}))
    saved = str(tmp_path / "saved")
    code = (
        "import sys\n"
        "from tf_netvlad.cli import main\n"
        f"a = main.main(['demo', '--config', 'other', '--data', {data!r}, '--saved-model', {saved!r},\n"
        f"               '--run-dir', {str(tmp_path / 'run')!r}])\n"
        f"b = main.main(['demo', '--data', {data!r}, '--scale', '0.01', '--run-dir', {str(trained)!r},\n"
        f"               '--saved-model', {saved!r}])\n"
        "print('RESULT', a, b, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.stdout.splitlines()[-1] == "RESULT 2 2 False False", done.stderr
    data_error, run_error = done.stderr.splitlines()
    assert data_error == (
        f"tf_netvlad demo: error: --data {data} holds the 'demo' dataset (seed 0, scale 0.01), not "
        "the 'other' dataset (seed 7, scale 1) asked for: pass another --data folder, or --config demo "
        "--seed 0 --scale 0.01 to reuse it (Python: data_dir=, config=, seed=, data_scale=).")
    assert run_error == (
        f"tf_netvlad demo: error: --run-dir {trained} holds a run trained on the 'small' dataset (seed "
        "11, scale 1), not on the 'demo' dataset (seed 0, scale 0.01): pass --fresh to start it over, "
        "or another --run-dir (Python: fresh=True, run_dir=).")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained"]
    assert sorted(p.name for p in trained.iterdir()) == [run.RUN_RECORD, "last"]
    assert sorted(p.relative_to(data) for p in tiny_demo["root"].rglob("*")) == before
    assert os.stat(tiny_demo["manifest"]).st_mtime_ns == stamp
    assert folder.read_params(data)["config"] == "demo"


def _thumbnail_recall_reference(split, grey, ns):
    """recall@N of 16x12 pixel thumbnails by brute force: squared distances of the L2-normalised
    float64 pixels, positives from the UTM positions (25 m), the rank of the nearest positive."""
    import numpy as np
    from PIL import Image

    def thumbnails(paths):
        rows = []
        for path in paths:
            with Image.open(path) as image:
                small = image.convert("L" if grey else "RGB").resize((16, 12), Image.BILINEAR)
                rows.append(np.asarray(small, np.float64).ravel())
        rows = np.stack(rows)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    db, queries = thumbnails(split.db_image_paths()), thumbnails(split.query_image_paths())
    d2 = ((queries[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    metres = np.linalg.norm(split.query_utm[:, None, :] - split.db_utm[None, :, :], axis=-1)
    ranks = np.array([(row < row[near <= 25.0].min()).sum() for row, near in zip(d2, metres)])
    return {n: float(np.mean(ranks < n)) for n in ns}


@pytest.mark.slow
def test_demo_on_a_held_out_configuration_reports_thumbnails_init_and_trained(monkeypatch, tmp_path, capsys):
    # ~35 s on 2 cores: the 'other' configuration at scale 0.05 (60 training queries, 10 test
    # queries against 30 db images), one refresh cycle of 15 steps, evaluation and export.
    import json

    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.demo import folder, run

    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--config", "other", "--scale", "0.05", "--epochs", "1", "--minutes", "10"]
    assert main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Test split (held out) of the 'other' dataset, held out from the CPU recipe's tuning" in printed
    assert "thumbnails grey   thumbnails RGB     k-means init          trained" in printed
    summary = json.loads((tmp_path / "runs" / "demo_other" / "demo_summary.json").read_text())
    assert summary["config"] == "other" and summary["training"]["epochs_done"] == 1
    # the recorded data parameters are the dataset's own (manifest.json) and the 'other' preset's
    params = summary["data_params"]
    assert params == json.loads(json.dumps(folder.read_params("demo_data_other")))
    assert (params["config"], params["seed"], params["scale"], params["image_size"]) == ("other", 7, 0.05,
                                                                                         [120, 160])
    assert summary["artefacts"]["dataset"] == str(tmp_path / "demo_data_other")
    saved = tmp_path / "saved_models" / "tiny_netvlad_demo_other" / "1"
    assert os.path.abspath(summary["artefacts"]["saved_model"]) == str(saved)
    assert (saved / "saved_model.pb").exists() and (tmp_path / "runs" / "demo_other" / "test_recall.png").exists()
    # thumbnail recall equal to an independent brute force on the test split
    test = load_split(tmp_path / "demo_data_other" / "demo_test.mat")
    assert (test.num_db, test.num_queries) == (30, 10)
    for key, grey in (("grey", True), ("rgb", False)):
        got = summary["thumbnails"][key]
        expected = _thumbnail_recall_reference(test, grey, (1, 5, 10, 20))
        assert {n: got[f"recall@{n}"] for n in (1, 5, 10, 20)} == pytest.approx(expected), key
        assert (got["num_queries"], got["num_db"], got["descriptor_dim"]) == (10, 30, 192 if grey else 576)
    for stage in ("before", "after"):
        assert summary[stage]["num_queries"] == 10 and 0 <= summary[stage]["recall@1"] <= 1
    # the run records its dataset; the same dataset passes the checks, another one is refused
    run_dir = tmp_path / "runs" / "demo_other"
    record = json.loads((run_dir / run.RUN_RECORD).read_text())
    assert record["data_params"] == params
    run.check_demo_inputs("demo_data_other", run_dir, run.data_params("other", scale=0.05))
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main.main(argv + ["--seed", "3", "--data", "other_seed"]) == 2
    assert "holds a run trained on the 'other' dataset (seed 7, scale 0.05), not on the 'other' dataset " \
           "(seed 3, scale 0.05): pass --fresh" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
