"""`tf_netvlad.cli.flags`: the shared flags, defined once, and their `type=` converters."""

import argparse

import pytest

from tf_netvlad import defaults
from tf_netvlad.cli import flags, main


def _subparsers():
    parser = main.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("text, expected", [("keep", None), ("KEEP", None), ("640", 640),
                                           ("480x640", (480, 640)), ("48,64", (48, 64))])
def test_image_size_converter(text, expected):
    assert flags.image_size(text) == expected
    assert flags.image_size_or_auto(text) == expected


@pytest.mark.parametrize("text", ["abc", "0", "1x2x3", "auto"])
def test_image_size_converter_refuses_with_the_library_message(text):
    with pytest.raises(argparse.ArgumentTypeError, match="image_size"):
        flags.image_size(text)


def test_other_converters():
    assert flags.image_size_or_auto("auto") == "auto"
    assert flags.optional_text("None") is None and flags.optional_text("null") is None
    assert flags.optional_text("imagenet") == "imagenet"
    assert flags.int_list("1,5,10") == (1, 5, 10)
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        flags.int_list("1,x")
    as_float = flags.optional(float)
    assert as_float("none") is None and as_float("2.5") == 2.5 and as_float.__name__ == "float"


def test_every_image_size_flag_is_parsed_by_the_shared_converter():
    """Except demo-data's --image-size H W (the size the images are rendered at)."""
    seen = []
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.dest in ("image_size", "query_image_size") and name != "demo-data":
                assert action.type in (flags.image_size, flags.image_size_or_auto,
                                       flags.image_size_or_keep), (name, action.dest)
                seen.append(name)
    assert set(seen) == {"train", "init", "fit-whitening", "evaluate", "evaluate-map", "export",
                         "index", "localize", "hloc"}


def test_shared_extraction_flags_have_the_same_defaults_everywhere():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if "--batch-size" in action.option_strings and name != "train":
                assert action.default == defaults.EXTRACT_BATCH_SIZE, name
            if "--strict" in action.option_strings:
                assert (action.dest, action.const, action.default) == ("on_error", "raise", "skip")
                assert {action.const, action.default} == set(defaults.ON_ERROR_CHOICES)
            if "--num-clusters" in action.option_strings and name != "train":
                assert action.default == defaults.NUM_CLUSTERS, name
            if "--backbone" in action.option_strings:
                assert tuple(action.choices) == defaults.BACKBONE_NAMES, name


def test_bad_image_size_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["init", "--dataset", "missing.mat", "--out", "m.keras", "--image-size", "big"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tf_netvlad init: error: argument --image-size: `image_size` must be" in err
    assert "missing.mat" not in err.splitlines()[-1]


def test_refuse_existing(tmp_path):
    target = tmp_path / "m.keras"
    flags.refuse_existing(str(target), overwrite=False)
    target.write_text("x")
    flags.refuse_existing(str(target), overwrite=True)
    with pytest.raises(flags.CommandError, match="pass --overwrite"):
        flags.refuse_existing(str(target), overwrite=False)
