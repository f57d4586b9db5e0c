"""`tf_netvlad.cli.main`: every --help without TensorFlow, the console script, error mapping and
the quiet TensorFlow import."""

import os
import shutil
import subprocess
import sys

import pytest

from tf_netvlad.cli import main


def test_help_is_fast_and_does_not_import_tensorflow():
    code = (
        "import sys, tf_netvlad.cli.main as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
    assert "evaluate" in out.stdout and "demo-data" in out.stdout


def test_every_subcommand_help_is_tensorflow_free():
    """The subcommands come from the real parser; one fresh process runs every --help in turn."""
    code = (
        "import argparse, sys\n"
        "from tf_netvlad.cli import main\n"
        "parser = main.build_parser()\n"
        "subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))\n"
        "for name in subs.choices:\n"
        "    try:\n"
        "        main.main([name, '--help'])\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "    else:\n"
        "        code = 'no exit'\n"
        "    print('RESULT', name, code, 'tensorflow' in sys.modules, 'keras' in sys.modules,\n"
        "          file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("RESULT ")]
    names = [r[0] for r in results]
    assert {"demo", "demo-data", "train", "init", "fit-whitening", "convert", "evaluate",
            "evaluate-map", "export", "index", "localize"} <= set(names)
    assert results == [[name, "0", "False", "False"] for name in names]
    assert "--image-size" in done.stdout and "(paper: 64; cpu: 16)" in done.stdout  # train flags


def test_installed_console_script_help():
    script = shutil.which("tf_netvlad")
    if script is None:
        pytest.skip("the tf_netvlad console script is not installed (pip install -e .)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: tf_netvlad") and "localize" in done.stdout


def test_python_dash_m_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "tf_netvlad", "train", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: tf_netvlad train") and "--recipe" in done.stdout


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main([])
    assert exit_info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


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


@pytest.mark.parametrize("command, strict, expected", [
    ("evaluate", True, "Fix or remove the file, or run without --strict."),
    ("evaluate", False, "Fix or remove the file."),  # e.g. the k-means init, which cannot skip
    ("index", True, "Fix or remove the file, or run without --strict."),
    ("train", False, "Fix or remove the file, or train with --on-bad-image skip."),
    ("init", False, "Fix or remove the file."),
    ("evaluate-map", False, "Fix or remove the file."),
])
def test_library_skip_hints_become_the_commands_flags(command, strict, expected):
    import argparse

    args = argparse.Namespace(command=command, on_error="raise" if strict else "skip")
    for library in ("Fix or remove the file, or use on_error='skip'.",
                    "Fix or remove the file, or train with on_bad_image='skip'."):
        assert main.cli_message(args, ValueError(f"Could not load image file 'x.png': {library}")) == (
            f"Could not load image file 'x.png': {expected}")


def test_unreadable_image_errors_name_cli_flags_not_python_arguments(tiny_model, tmp_path, capsys):
    from tests.helpers import write_block_images
    from tf_netvlad.models.model_files import save_model

    names = write_block_images(tmp_path, 3, seed=0)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [f"{name},db,{500000 + 10 * i},4000000" for i, name in enumerate(names + ["broken.png"])]
    rows += [f"{names[0]},query,500001,4000000"]
    (tmp_path / "split.csv").write_text("path,role,easting,northing\n" + "\n".join(rows) + "\n")
    save_model(tiny_model, tmp_path / "m.keras")
    evaluate = ["evaluate", "--dataset", str(tmp_path / "split.csv"), "--model", str(tmp_path / "m.keras")]
    assert main.main(evaluate + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "or run without --strict." in err and "on_error" not in err
    assert main.main(["init", "--dataset", str(tmp_path / "split.csv"), "--backbone", "tiny",
                      "--num-clusters", "2", "--num-images", "4", "--per-image", "2",
                      "--out", str(tmp_path / "init.keras")]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and err.rstrip().endswith("Fix or remove the file.") and "on_error" not in err


# A command line per input flag of `flags.INPUT_FIELDS` (the missing path is `{tmp}/missing`, the
# other inputs exist or are not given), and the flag its error must name.
MISSING_INPUTS = [
    (["train", "--dataset", "{tmp}/missing", "--out", "{tmp}/run"], "--dataset"),
    (["train", "--dataset", "{tmp}/ok.mat", "--val", "{tmp}/missing", "--out", "{tmp}/run"], "--val"),
    (["train", "--dataset", "{tmp}/ok.mat", "--root", "{tmp}/missing", "--out", "{tmp}/run"], "--root"),
    (["train", "--dataset", "{tmp}/ok.mat", "--val", "{tmp}/ok.mat", "--val-query-root", "{tmp}/missing",
      "--out", "{tmp}/run"], "--val-query-root"),
    (["evaluate", "--dataset", "{tmp}/ok.mat", "--db-root", "{tmp}/missing", "--backbone", "tiny",
      "--json", "{tmp}/r.json"], "--db-root"),
    (["evaluate-map", "--model", "{tmp}/m.keras", "--gt", "{tmp}/missing", "--images", "{tmp}"], "--gt"),
    (["index", "--images", "{tmp}/missing", "--model", "{tmp}/m.keras", "--out", "{tmp}/index"], "--images"),
    (["hloc", "--model", "{tmp}/m.keras", "--images", "{tmp}", "--queries", "{tmp}/missing",
      "--features", "{tmp}/f.h5"], "--queries"),
    # before this was checked up front, `localize` loaded TensorFlow and the index first
    (["localize", "--index", "{tmp}/index", "--model", "{tmp}/m.keras", "{tmp}/ok.mat",
      "--gt-dataset", "{tmp}/missing"], "--gt-dataset"),
]


def test_a_missing_input_fails_in_one_line_before_tensorflow_and_writes_nothing(tmp_path):
    """`tf_netvlad train --dataset typo.mat` used to import TensorFlow (≈ 8 s) before it said so.
    One fresh process runs every command line; each must exit 2 with one line naming the flag and
    the path, with TensorFlow and Keras never imported and nothing created in the folder."""
    (tmp_path / "ok.mat").write_bytes(b"not read: the missing input is refused first")
    before = sorted(p.name for p in tmp_path.iterdir())
    argvs = [[a.replace("{tmp}", str(tmp_path)) for a in argv] for argv, _ in MISSING_INPUTS]
    code = (
        "import contextlib, io, json, sys\n"
        "from tf_netvlad.cli import main\n"
        "results = []\n"
        f"for argv in {argvs!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        status = main.main(argv)\n"
        "    results.append([status, err.getvalue()])\n"
        "print(json.dumps([results, 'tensorflow' in sys.modules, 'keras' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    results, tf_imported, keras_imported = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert (tf_imported, keras_imported) == (False, False)
    for (argv, flag), (status, err) in zip(MISSING_INPUTS, results):
        assert status == 2, (argv, err)
        assert err == f"tf_netvlad {argv[0]}: error: {flag} {tmp_path}/missing: no such file or folder.\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
