"""`--model NAME` / URI is resolved after the command's other inputs are read and checked.

A pretrained name is a download of hundreds of MB and a conversion. `cli.main` used to resolve
`--model` before every handler, so `tf_netvlad evaluate --model netvlad_vgg16_pitts30k --dataset
typo.mat` fetched and converted the weights, then said the dataset does not exist. Now each of the
seven commands with `--model` resolves it once its dataset, ground truth, index or image folders
are read. The table points at the local `FileServer` of `tests/convert/test_download.py`; a
missing input must fail with its one-line error and no request reaching the server.
"""

import pytest

from tests.convert import test_download as download_tests
from tests.convert.test_pretrained import HLOC_PATH, mat_entry, use_table
from tf_netvlad.cli import main, pretrained

file_server, keras_home = download_tests.file_server, download_tests.keras_home

NAME = "netvlad_vgg16_pitts30k"

# command line with a missing input ({tmp}: the test's folder), and what its error names
MISSING_INPUT = [
    (["evaluate", "--dataset", "{tmp}/typo.mat"], "typo.mat"),
    (["evaluate-map", "--gt", "{tmp}/gnd_roxford5k.pkl", "--images", "{tmp}"], "gnd_roxford5k.pkl"),
    (["fit-whitening", "--dataset", "{tmp}/typo.mat", "--dim", "2", "--out", "{tmp}/w.keras"], "typo.mat"),
    (["index", "--images", "{tmp}/no_such_folder", "--out", "{tmp}/index"],
     "--images {tmp}/no_such_folder: no such file or folder."),
    (["index", "--dataset", "{tmp}/typo.csv", "--out", "{tmp}/index"], "typo.csv"),
    (["localize", "{tmp}/q.jpg", "--index", "{tmp}/no_index"],
     "'{tmp}/no_index' is not a tf_netvlad retrieval index"),
    (["hloc", "--images", "{tmp}/no_such_folder", "--features", "{tmp}/f.h5"],
     "--images {tmp}/no_such_folder: no such file or folder."),
    (["hloc", "--index", "{tmp}/no_index", "--queries", "{tmp}", "--features", "{tmp}/f.h5"],
     "'{tmp}/no_index' is not a tf_netvlad retrieval index"),
]


@pytest.mark.parametrize("argv, names", MISSING_INPUT, ids=["evaluate", "evaluate-map", "fit-whitening",
                                                          "index-images", "index-dataset", "localize",
                                                          "hloc-images", "hloc-index"])
def test_a_missing_input_fails_before_the_model_name_is_downloaded(argv, names, keras_home, file_server,
                                                                   tmp_path, monkeypatch, capsys):
    file_server.files[HLOC_PATH] = b"never requested"
    use_table(monkeypatch, mat_entry(file_server.url(HLOC_PATH)))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", NAME]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tf_netvlad {argv[0]}: error: ") and err.count("\n") == 1
    assert names.replace("{tmp}", str(tmp_path)) in err
    assert file_server.requests == []
    assert not (keras_home / "tf_netvlad").exists()


class Resolved(Exception):
    """Raised by the stand-in resolver: the command got to resolving --model (main does not
    catch it, so it reaches the test)."""


@pytest.fixture(scope="module")
def built_index(tiny_demo, tiny_model, tmp_path_factory):
    from tf_netvlad.retrieval.build import build_retrieval_index

    out = tmp_path_factory.mktemp("resolution") / "index"
    folder = tiny_demo["root"] / "images" / "test" / "database"
    build_retrieval_index(tiny_model, out, str(folder), progress=False)
    return out, folder


def _valid_argv(command, tiny_demo, folder, index, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    query = sorted(folder.iterdir())[0]
    (gt / "q_query.txt").write_text(f"{query.stem} 0 0 8 8\n")
    (gt / "q_good.txt").write_text(f"{query.stem}\n")
    (gt / "q_ok.txt").write_text("")
    (gt / "q_junk.txt").write_text("")
    return {
        "evaluate": ["--dataset", str(tiny_demo["test_mat"])],
        "evaluate-map": ["--gt", str(gt), "--images", str(folder)],
        "fit-whitening": ["--dataset", str(tiny_demo["test_mat"]), "--dim", "2", "--out", str(tmp_path / "w.keras")],
        "export": ["--saved-model", str(tmp_path / "serving")],
        "index": ["--images", str(folder), "--out", str(tmp_path / "index")],
        "localize": [str(query), "--index", str(index)],
        "hloc": ["--index", str(index), "--features", str(tmp_path / "f.h5")],
    }[command]


def _commands_with_model_flag():
    import argparse

    parser = main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(name for name, p in sub.choices.items()
                  if any("--model" in a.option_strings for a in p._actions))


def test_the_commands_with_a_model_flag_are_the_seven_this_file_checks():
    assert _commands_with_model_flag() == ["evaluate", "evaluate-map", "export", "fit-whitening", "hloc",
                                           "index", "localize"]


@pytest.mark.parametrize("command", ["evaluate", "evaluate-map", "export", "fit-whitening", "hloc", "index",
                                     "localize"])
def test_every_command_with_a_model_flag_resolves_it_after_reading_its_inputs(
        command, tiny_demo, built_index, tmp_path, monkeypatch):
    index, folder = built_index
    seen = []

    def resolver(args):
        seen.append(args.model)
        raise Resolved

    monkeypatch.setattr(pretrained, "resolve_model_flag", resolver)
    with pytest.raises(Resolved):
        main.main([command, *_valid_argv(command, tiny_demo, folder, index, tmp_path), "--model", NAME])
    assert seen == [NAME]
    assert not (tmp_path / "index").exists() and not (tmp_path / "serving").exists()
