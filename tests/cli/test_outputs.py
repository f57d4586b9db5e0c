"""Outputs and numbers are checked before any work (`flags.check_output`, the commands' `check`).

Regressions of issue 14 item 6: `evaluate --json` onto a directory or into a read-only folder failed
after the whole evaluation, `init --out m.h5` after the k-means, `fit-whitening --dim 0` after the
extraction. Now every command refuses such a value in one line naming the flag, before TensorFlow
is imported, a model is resolved or loaded, or a dataset is read, and leaves nothing behind.
"""

import os
import subprocess
import sys

import pytest

from tf_netvlad.cli import flags, main


@pytest.fixture
def outputs(tmp_path):
    """A folder with a plain file, directories named like output files and an existing model."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.json").mkdir()
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "adir.keras").mkdir()
    (tmp_path / "existing.keras").write_text("x")
    return tmp_path


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if a command gets past its checks: importing TensorFlow, resolving --model
    (a download for a pretrained name) and loading a model all raise."""
    from tf_netvlad.models import model_files

    def reached(*args, **kwargs):
        raise AssertionError("the command ran past its output checks")

    monkeypatch.setattr(main, "import_tensorflow_quietly", reached)
    monkeypatch.setattr(main.pretrained, "resolve_model_flag", reached, raising=False)
    monkeypatch.setattr(model_files, "load_model", reached)


EVALUATE = ["evaluate", "--dataset", "missing.mat", "--model", "missing.keras"]
MAP = ["evaluate-map", "--model", "missing.keras", "--gt", "missing.pkl", "--images", "missing"]
LOCALIZE = ["localize", "q.jpg", "--index", "missing", "--model", "missing.keras"]
EXPORT = ["export", "--model", "missing.keras"]


@pytest.mark.parametrize("argv, message", [
    (EVALUATE + ["--json", "{tmp}/r.txt"], "--json {tmp}/r.txt: the file name must end in .json."),
    (EVALUATE + ["--json", "{tmp}/adir.json"], "--json {tmp}/adir.json: this is a directory; --json takes a file name."),
    (EVALUATE + ["--json", "{tmp}/afile/r.json"], "--json {tmp}/afile/r.json: {tmp}/afile is a file, not a directory."),
    (EVALUATE + ["--plot", "{tmp}/curve.jpg"], "--plot {tmp}/curve.jpg: the file name must end in .png."),
    (EVALUATE + ["--retrievals", "{tmp}/adir.png"], "--retrievals {tmp}/adir.png: this is a directory"),
    (EVALUATE + ["--memmap-dir", "{tmp}/afile"], "--memmap-dir {tmp}/afile: this is a file; --memmap-dir takes a directory."),
    (MAP + ["--json", "{tmp}/map.csv"], "--json {tmp}/map.csv: the file name must end in .json."),
    (MAP + ["--plot", "{tmp}/afile/ap.png"], "--plot {tmp}/afile/ap.png: {tmp}/afile is a file"),
    (["init", "--dataset", "missing.mat", "--out", "{tmp}/m.h5"], "--out {tmp}/m.h5: the file name must end in .keras."),
    (["init", "--dataset", "missing.mat", "--out", "{tmp}/existing.keras"], "{tmp}/existing.keras already exists; pass --overwrite"),
    (["fit-whitening", "--dataset", "missing.mat", "--model", "missing.keras", "--out", "{tmp}/adir.keras"],
     "--out {tmp}/adir.keras: this is a directory; --out takes a file name."),
    (["fit-whitening", "--dataset", "missing.mat", "--model", "missing.keras", "--out", "{tmp}/w.keras",
      "--dim", "64", "--max-images", "64"], "--dim 64 needs at least 65 database images"),
    (["convert", "--matconvnet", "missing.mat", "--out", "{tmp}/c.pb"], "--out {tmp}/c.pb: the file name must end in .keras."),
    (["train", "--dataset", "missing.mat", "--out", "{tmp}/afile"], "--out {tmp}/afile: this is a file; --out takes a directory."),
    (["train", "--dataset", "missing.mat", "--out", "{tmp}/run", "--batch-size", "0"], "--batch-size must be an int >= 1"),
    (["index", "--model", "missing.keras", "--images", "missing", "--out", "{tmp}/afile"], "--out {tmp}/afile: this is a file"),
    (LOCALIZE + ["--json", "{tmp}/adir.json"], "--json {tmp}/adir.json: this is a directory"),
    (LOCALIZE + ["--plot", "{tmp}/grid.svg"], "--plot {tmp}/grid.svg: the file name must end in .png."),
    (EXPORT + ["--saved-model", "{tmp}/afile"], "--saved-model {tmp}/afile: this is a file"),
    (EXPORT + ["--onnx", "{tmp}/m.pb"], "--onnx {tmp}/m.pb: the file name must end in .onnx."),
    (["demo", "--data", "{tmp}/afile"], "--data {tmp}/afile: this is a file; --data takes a directory."),
    (["demo-data", "--out", "{tmp}/afile/data"], "--out {tmp}/afile/data: {tmp}/afile is a file"),
])
def test_bad_outputs_are_refused_first_in_one_line(outputs, nothing_runs, capsys, argv, message):
    before = sorted(p.name for p in outputs.rglob("*"))
    argv = [a.format(tmp=outputs) for a in argv]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tf_netvlad {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=outputs) in err
    assert "missing" not in err.replace(str(outputs), "")  # no input was looked at
    assert sorted(p.name for p in outputs.rglob("*")) == before  # nothing created


@pytest.mark.parametrize("argv", [
    ["fit-whitening", "--dataset", "d.mat", "--model", "m.keras", "--out", "w.keras", "--dim", "0"],
    ["fit-whitening", "--dataset", "d.mat", "--model", "m.keras", "--out", "w.keras", "--max-images", "0"],
    ["init", "--dataset", "d.mat", "--out", "m.keras", "--num-images", "0"],
    ["init", "--dataset", "d.mat", "--out", "m.keras", "--per-image", "-2"],
    ["init", "--dataset", "d.mat", "--out", "m.keras", "--niter", "0"],
    ["init", "--dataset", "d.mat", "--out", "m.keras", "--num-clusters", "0"],
    ["evaluate", "--dataset", "d.mat", "--backbone", "tiny", "--batch-size", "0"],
    ["evaluate", "--dataset", "d.mat", "--backbone", "tiny", "--recall-ns", "0"],
    ["evaluate", "--dataset", "d.mat", "--backbone", "tiny", "--recall-ns", "1,-5"],
    ["evaluate", "--dataset", "d.mat", "--backbone", "tiny", "--approx-nprobe", "0"],
    ["evaluate", "--dataset", "d.mat", "--backbone", "tiny", "--approx-train-size", "-1"],
    ["evaluate-map", "--model", "m.keras", "--gt", "g.pkl", "--images", "i", "--top-k", "0"],
    ["index", "--model", "m.keras", "--images", "i", "--out", "x", "--chunk-size", "0"],
    ["index", "--model", "m.keras", "--images", "i", "--out", "x", "--batch-size", "-1"],
    ["localize", "q.jpg", "--index", "x", "--model", "m.keras", "--top-k", "0"],
    ["export", "--model", "m.keras", "--saved-model", "s", "--version", "0"],
    ["export", "--model", "m.keras", "--saved-model", "s", "--dim", "0"],
    ["demo", "--minutes", "0"],
    ["demo", "--scale", "-1"],
    ["demo-data", "--out", "d", "--scale", "0"],
    ["demo-data", "--out", "d", "--image-size", "0", "64"],
])
def test_non_positive_numbers_are_refused_by_the_parser(nothing_runs, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    flag = [a for a in argv if a.startswith("--")][-1]  # the bad value is the last flag's
    assert last.startswith(f"tf_netvlad {argv[0]}: error: argument {flag}: must be ")
    assert "positive" in last or "> 0" in last


def test_read_only_folder_is_refused(outputs, nothing_runs, monkeypatch, capsys):
    """Root ignores permission bits, so the folder's write permission is denied through
    `os.access`, which is what the check asks (a read-only mount answers the same way)."""
    read_only = str(outputs / "adir.json")
    real_access = os.access
    monkeypatch.setattr(flags.os, "access",
                        lambda path, mode: real_access(path, mode) and not str(path).startswith(read_only))
    assert main.main(EVALUATE + ["--json", f"{read_only}/sub/r.json"]) == 2
    assert (f"--json {read_only}/sub/r.json: cannot write into {read_only} (permission denied or "
            "read-only).") in capsys.readouterr().err
    (outputs / "adir.json" / "old.json").write_text("{}")
    assert main.main(EVALUATE + ["--json", f"{read_only}/old.json"]) == 2
    assert "the file exists and is not writable" in capsys.readouterr().err
    assert not (outputs / "adir.json" / "sub").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores chmod: see test_read_only_folder_is_refused")
def test_read_only_folder_is_refused_with_real_permissions(outputs, nothing_runs, capsys):
    locked = outputs / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main.main(EVALUATE + ["--json", str(locked / "r.json")]) == 2
        assert f"cannot write into {locked}" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_evaluate_json_onto_a_directory_fails_before_the_evaluation(tiny_demo, tmp_path, monkeypatch, capsys):
    """With a real dataset: neither the split, the model nor the evaluation is touched."""
    from tf_netvlad.evaluation import run

    ran = []
    monkeypatch.setattr(run, "evaluate_model", lambda *a, **k: ran.append(a))
    (tmp_path / "r.json").mkdir()
    argv = ["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
            "--json", str(tmp_path / "r.json")]
    assert main.main(argv) == 2
    assert "--json" in capsys.readouterr().err and ran == []


def test_outputs_are_checked_before_tensorflow_is_imported(tmp_path):
    """In a fresh process: the error comes before `import tensorflow` (so it is instant)."""
    code = ("import sys; from tf_netvlad.cli.main import main\n"
            f"rc = main(['evaluate', '--dataset', 'missing.mat', '--model', 'missing.keras', "
            f"'--json', {str(tmp_path)!r}])\n"
            "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert f"error: --json {tmp_path}: the file name must end in .json." in done.stderr


def test_check_output_accepts_good_paths_and_creates_nothing(tmp_path):
    flags.check_output(None, "--json")
    flags.check_output("", "--json", (".json",))
    flags.check_output(str(tmp_path / "new" / "deeper" / "r.JSON"), "--json", (".json",))
    flags.check_output(str(tmp_path / "new_index"), "--out", directory=True)
    (tmp_path / "index").mkdir()
    flags.check_output(str(tmp_path / "index"), "--out", directory=True)
    flags.check_output(str(tmp_path / "m.keras"), "--out", (".keras",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
