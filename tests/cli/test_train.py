"""`tf_netvlad train` (`tf_netvlad.cli.train`): one typed flag per `TrainConfig` field."""

import dataclasses
import json

import pytest

from tests.data.test_layouts import PITTS_DB, pittsburgh_as_distributed, write_dbstruct
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
    assert main.build_parser().parse_args(BASE + ["--refresh-share", "none"]).refresh_share is None
    assert main.build_parser().parse_args(BASE + ["--refresh-share", "0.4"]).refresh_share == 0.4


def test_paper_recipe_is_matlab_and_the_cpu_recipe_keeps_its_tuning():
    paper = train_cli.train_config("paper", {})
    assert (paper.loss_reduction, paper.exclude_trivial_m2, paper.violating_only, paper.passes,
            paper.epochs, paper.time_limit_s) == ("mean_violating", 1.0, True, 30.0, None, None)
    cpu = train_cli.train_config("cpu", {})
    assert (paper.refresh_share, cpu.refresh_share) == (None, 0.25)  # MATLAB's interval; bounded refreshes
    assert (cpu.loss_reduction, cpu.exclude_trivial_m2, cpu.violating_only, cpu.passes,
            cpu.epochs, cpu.time_limit_s) == ("sum", None, False, None, 100, 600)
    args = main.build_parser().parse_args(BASE + [
        "--recipe", "paper", "--passes", "none", "--epochs", "85", "--exclude-trivial-m2", "none",
        "--no-violating-only", "--loss-reduction", "sum"])
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    old = train_cli.train_config(args.recipe, overrides)  # a run saved before these rules existed
    assert (old.passes, old.epochs, old.exclude_trivial_m2, old.violating_only) == (None, 85, None, False)


def test_a_run_without_length_is_refused_naming_the_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert main.main(["train", "--dataset", str(tmp_path / "x.mat"), "--out", str(out), "--recipe", "paper",
                      "--passes", "none"]) == 2
    err = capsys.readouterr().err
    assert "The run has no length" in err and "--passes" in err and "--time-limit-s" in err
    assert not out.exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--optimizer", "rmsprop", "invalid choice: 'rmsprop'"),
    ("--image-size", "64x", "`image_size` must be"),
    ("--recall-ns", "1,five", "comma-separated"),
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
    mat = pittsburgh_as_distributed(tmp_path / "pitts")  # the splits are checked before the strategy
    argv = ["train", "--dataset", str(mat), "--out", str(tmp_path / "run"), "--multi-worker"]
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


@pytest.mark.parametrize("recipe, size", [("cpu", "96x128"), ("paper", "480x640")])
def test_train_names_the_training_size_and_the_evaluate_flag(tmp_path, monkeypatch, capsys, recipe, size):
    """`tf_netvlad evaluate` resizes to --image-size, by default the files' own size: a CPU-recipe
    model trained at 96x128 and evaluated on "small"'s 180x240 files scored 24.5 % recall@1 instead
    of 29.5 % at 96x128 (docs/recipes.md). The end of `train` says which size the model learnt."""
    from tf_netvlad.training import train

    best = str(tmp_path / "run" / "best.keras")
    monkeypatch.setattr(train, "train", lambda *a, **k: {"status": "completed", "epochs_done": 3,
                                                          "iterations": 12028, "wall_time_s": 600.0,
                                                          "files": {"best": best}})
    mat = pittsburgh_as_distributed(tmp_path / "pitts")
    assert main.main(["train", "--dataset", str(mat), "--out", str(tmp_path / "run"), "--recipe", recipe]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "training completed: 3 epochs, 12,028 optimizer steps in 10.0 min" in out
    assert f"best: {best}" in out
    assert out[-1] == (f"trained on {size} images; tf_netvlad evaluate reads each test image at its own "
                       f"size unless given --image-size {size}")


def test_missing_validation_images_stop_train_before_any_work(tmp_path, monkeypatch, capsys):
    """Regression: the k-means init ran (and init.keras was written) before the validation
    images were found missing. Now both splits are checked before the training starts."""
    from tf_netvlad.training import train

    started = []
    monkeypatch.setattr(train, "train", lambda *a, **k: started.append(a))
    train_mat = pittsburgh_as_distributed(tmp_path / "pitts")
    val_mat = write_dbstruct(tmp_path / "pitts" / "datasets" / "pitts30k_val.mat", PITTS_DB,
                             ["000/000998_pitch1_yaw1.jpg", "000/000999_pitch1_yaw1.jpg"], "val")
    out = tmp_path / "run"
    assert main.main(["train", "--dataset", str(train_mat), "--val", str(val_mat),
                      "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"tf_netvlad train: error: {val_mat}: 2 of 2 query images not found")
    assert "--val-root" in err and "--val-query-root" in err and "000999_pitch1_yaw1.jpg" in err
    assert "dataset: layout: Pittsburgh as distributed" in captured.out  # the training split was fine
    assert not started and not out.exists()


# --------------------------------------------------------------------------- bad training input


def _write_csv_split(folder, name, db_x, query_x):
    """A CSV split (`path,role,easting,northing`) on a line (northing 0) with 8x8 solid images."""
    from tests.helpers import write_solid_image

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,role,easting,northing"]
    for role, xs in (("db", db_x), ("query", query_x)):
        for i, x in enumerate(xs):
            image = f"{name}_{role}{i}.png"
            write_solid_image(folder / image, (7 * i) % 256, size=(8, 8))
            lines.append(f"{image},{role},{float(x)!r},0.0")
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


DB_X = [5.0 * i for i in range(40)]  # a database image every 5 m over 195 m


def _no_model(monkeypatch):
    """Makes building the model (and its k-means init) fail loudly: the errors must come first."""
    from tf_netvlad.training import run_model

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the bad input was refused")

    monkeypatch.setattr(run_model, "prepare_model", refuse)
    monkeypatch.setattr(run_model, "new_model", refuse)


@pytest.mark.parametrize("query_x, flags, message", [
    # two queries near the database, one 1 km away: 2 < --batch-size 4
    ([2.0, 52.0, 1000.0], [], "only 2 of its 3 queries have a database image within 10 m, fewer than one "
                              "batch of 4 tuples. Lower --batch-size"),
    ([1000.0, 2000.0], [], "none of its 2 queries has a database image within 10 m"),
    # every query stands on a database image, the others are 5 and 10 m away (d² 25, 100 m²)
    ([0.0, 50.0, 100.0, 150.0], ["--exclude-trivial-m2", "100"],
     "within 10 m (sqrt of nonTrivPosDistSqThr = 100 m²) and beyond 10 m (trivial-positive rule), so "
     "there is nothing to train on"),
    ([2.0, 52.0, 102.0, 152.0], ["--num-negatives", "35"], "fewer than the 35 negatives a tuple needs"),
])
def test_bad_training_splits_fail_in_one_line_before_anything_is_made(tmp_path, capsys, monkeypatch, query_x,
                                                                      flags, message):
    _no_model(monkeypatch)
    data = _write_csv_split(tmp_path / "data", "train", DB_X, query_x)
    out = tmp_path / "run"
    code = main.main(["train", "--dataset", str(data), "--out", str(out)] + flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("tf_netvlad train: error: Training split 'train' (--dataset): ")
    assert message in err
    assert not out.exists()  # no model, no k-means, no run directory


def test_all_positives_inside_the_trivial_radius_says_which_flag(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    data = _write_csv_split(tmp_path / "data", "train", [0.0, 0.5, 300.0, 305.0, 310.0, 315.0, 320.0, 325.0],
                            [0.2, 0.4, 0.1, 0.3])  # all positives within 1 m; the paper rule drops them
    out = tmp_path / "run"
    assert main.main(["train", "--dataset", str(data), "--out", str(out), "--exclude-trivial-m2", "1",
                      "--num-negatives", "2"]) == 2
    err = capsys.readouterr().err
    assert "within the trivial radius: train with --exclude-trivial-m2 none" in err and not out.exists()


def test_validation_split_without_positives_fails_before_anything_is_made(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    data = _write_csv_split(tmp_path / "data", "train", DB_X, [2.0, 52.0, 102.0, 152.0])
    val = _write_csv_split(tmp_path / "data", "val", [0.0, 10.0, 20.0], [500.0, 600.0])
    out = tmp_path / "run"
    assert main.main(["train", "--dataset", str(data), "--val", str(val), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tf_netvlad train: error: Validation split 'val' (--val): none of its 2 queries "
                          "has a database image within 25 m (posDistThr), so recall@N cannot be measured.")
    assert not out.exists()


@pytest.mark.parametrize("saved_recipe, now_recipe", [("paper", "cpu"), ("cpu", "paper")])
def test_a_refused_resume_names_the_flags_that_resume_it(saved_recipe, now_recipe):
    # A run saved with one recipe, resumed with the other: every training-state key differs in
    # kind (names, numbers, None, booleans both ways, the image size). The flags the message
    # suggests, given to `tf_netvlad train`, must make the same check accept the checkpoint.
    import re
    import shlex

    from tf_netvlad.training.checkpointing import ResumeMismatch, check_resume
    from tf_netvlad.training.config import config_json

    saved = {"config": config_json(train_cli.train_config(saved_recipe, {})), "train_split": "abc"}
    now = train_cli.train_config(now_recipe, {})
    with pytest.raises(ResumeMismatch) as refused:
        check_resume(saved, now, {"train_split": "abc"}, "run/last")
    message = str(refused.value)
    assert "\n" not in message and "margin: checkpoint=" in message and "new --out" in message
    suggested = re.search(r"checkpoint's settings \((.*); Python: ", message).group(1)
    assert "--image-size " in suggested and "--margin " in suggested and "--no-" in suggested
    args = main.build_parser().parse_args(BASE + ["--recipe", now_recipe] + shlex.split(suggested))
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    check_resume(saved, train_cli.train_config(now_recipe, overrides), {"train_split": "abc"}, "run/last")
    with pytest.raises(ResumeMismatch, match=r"train on the checkpoint's --dataset; to start over"):
        check_resume(saved, train_cli.train_config(saved_recipe, {}), {"train_split": "other"}, "run/last")
