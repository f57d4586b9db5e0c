"""`tf_netvlad train` (`tf_netvlad.cli.train`): one typed flag per `TrainConfig` field."""

import dataclasses
import json

import pytest

from tf_netvlad.cli import main
from tf_netvlad.cli import train as train_cli
from tf_netvlad.training.config import CPU_RECIPE, TrainConfig

BASE = ["train", "--dataset", "x.mat", "--out", "run"]


def test_every_config_field_is_a_flag_that_keeps_the_recipe_when_not_given():
    parser = main.build_parser()
    args = parser.parse_args(BASE)
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert not [name for name in fields if hasattr(args, name)]
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for name in fields:
        assert "--" + name.replace("_", "-") in help_text
    assert train_cli.train_config("cpu", {}) == dataclasses.replace(TrainConfig(), **CPU_RECIPE)
    assert train_cli.train_config("paper", {}) == TrainConfig()


def test_train_flags_arrive_typed():
    args = main.build_parser().parse_args(BASE + [
        "--image-size", "64x80", "--recall-ns", "1,5", "--weights", "none", "--trainable-from", "NULL",
        "--time-limit-s", "none", "--whiten", "12", "--lr", "0.01", "--epochs", "3",
        "--no-refresh-slowdown", "--exclude-very-hard", "--optimizer", "sgd", "--recipe", "paper"])
    assert args.image_size == (64, 80) and args.recall_ns == (1, 5)
    assert args.weights is None and args.trainable_from is None and args.time_limit_s is None
    assert args.whiten == 12 and args.lr == 0.01 and args.epochs == 3
    assert args.refresh_slowdown is False and args.exclude_very_hard is True
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if hasattr(args, f.name)}
    config = train_cli.train_config(args.recipe, overrides)
    assert config.image_size == (64, 80) and config.optimizer == "sgd" and config.backbone == "vgg16"
    assert main.build_parser().parse_args(BASE + ["--time-limit-s", "90"]).time_limit_s == 90.0


@pytest.mark.parametrize("flag, value, message", [
    ("--optimizer", "rmsprop", "invalid choice: 'rmsprop'"),
    ("--image-size", "64x", "`image_size` must be"),
    ("--recall-ns", "1,five", "comma-separated integers"),
    ("--epochs", "many", "invalid int value: 'many'"),
    ("--whiten", "some", "invalid int value: 'some'"),
])
def test_bad_train_values_are_refused_by_the_parser(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main.build_parser().parse_args(BASE + [flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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
