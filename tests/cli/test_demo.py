"""`tf_netvlad demo-data` and `demo` (`tf_netvlad.cli.demo`)."""

import subprocess
import sys

from tf_netvlad.cli import main
from tf_netvlad.training.config import CPU_RECIPE


def test_demo_defaults_come_from_the_cpu_recipe():
    parse = main.build_parser().parse_args
    data = parse(["demo-data", "--out", "d"])
    assert tuple(data.image_size) == CPU_RECIPE["image_size"] and data.needs_tensorflow is False
    demo = parse(["demo"])
    assert demo.minutes * 60 == CPU_RECIPE["time_limit_s"] and demo.epochs is None
    assert demo.needs_tensorflow is True


def test_demo_data_writes_the_dataset_without_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from tf_netvlad.cli import main\n"
        f"code = main.main(['demo-data', '--out', {str(tmp_path / 'data')!r}, '--scale', '0.01',\n"
        "                   '--image-size', '48', '64'])\n"
        "print('RESULT', code, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "RESULT 0 False"
    assert f"test_mat: {tmp_path / 'data' / 'demo_test.mat'}" in done.stdout
    from PIL import Image

    first = next((tmp_path / "data").rglob("*.jpg"))
    assert Image.open(first).size == (64, 48)


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
