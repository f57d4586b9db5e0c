"""`tf_netvlad demo-data` and `demo` (`tf_netvlad.cli.demo`)."""

import os
import subprocess
import sys

import pytest

from tf_netvlad.cli import demo as cli_demo
from tf_netvlad.cli import main
from tf_netvlad.training.config import CPU_RECIPE


def test_demo_defaults_come_from_the_cpu_recipe():
    from tf_netvlad.demo import dataset

    parse = main.build_parser().parse_args
    data = parse(["demo-data", "--out", "d"])
    assert data.config == "demo" and data.image_size is None and data.needs_tensorflow is False
    # unset flags take the preset's values: the demo's images are the CPU recipe's size
    assert dataset.resolve_params(config=data.config)["image_size"] == list(CPU_RECIPE["image_size"])
    assert tuple(cli_demo.CONFIG_HELP) == dataset.config_names()
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

    calls = []
    monkeypatch.setattr(run, "run_demo", lambda **kwargs: calls.append(kwargs) or {"k": 1})
    monkeypatch.setattr(run, "format_report", lambda report: f"report {report}")
    assert main.main(["demo", "--data", str(tmp_path / "d"), "--minutes", "0.5", "--epochs", "2",
                      "--fresh"]) == 0
    assert calls == [dict(data_dir=str(tmp_path / "d"), run_dir="runs/demo",
                          saved_model_dir="saved_models/tiny_netvlad_demo", minutes=0.5, seed=0,
                          data_scale=1.0, epochs=2, fresh=True)]
    assert "report {'k': 1}" in capsys.readouterr().out


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

    calls = []
    monkeypatch.setattr(run, "run_demo", lambda **kwargs: calls.append(kwargs) or {})
    data = tmp_path / "held_out"
    data.mkdir()
    manifest = {"config": "small", "seed": 11, "image_size": [180, 240], "sizes": {}, "viewpoint": 1.3,
                "conditions": {}, "scale": 1.0}
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert main.main(["demo", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "holds the 'small' demo-data configuration" in err and "--data" in err
    assert calls == [] and (data / "manifest.json").exists()
