"""The main job end to end on a tiny configuration (the full run is the README's first command)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tf_netvlad.cli import main


@pytest.mark.slow
def test_demo_command_writes_every_artefact_and_beats_the_kmeans_init(tmp_path, capsys):
    # 4 refresh cycles of the CPU recipe (4 x 63 steps); --minutes only guards against a hang.
    argv = ["demo", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
            "--saved-model", str(tmp_path / "saved" / "demo"), "--scale", "0.1", "--epochs", "4",
            "--minutes", "15"]
    assert main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "k-means init" in printed and "trained" in printed and "artefacts:" in printed
    summary = json.loads((tmp_path / "run" / "demo_summary.json").read_text())
    assert summary["training"]["status"] == "completed" and summary["training"]["epochs_done"] == 4
    assert summary["training"]["iterations"] == json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] > 0
    # The reported recalls are those of the two model files on the held-out test split.
    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.evaluation.recall import evaluate
    from tf_netvlad.models.model_files import load_model

    test_split = load_split(Path(summary["artefacts"]["dataset"]) / "demo_test.mat")
    for stage, key in (("before", "init_model"), ("after", "trained_model")):
        got = evaluate(load_model(summary["artefacts"][key], compile=False), test_split,
                       image_size=(96, 128), ns=(1, 5, 10, 20), progress=False)
        assert summary[stage]["num_queries"] == got["num_queries"] == 15
        for n in (1, 5, 10, 20):
            assert summary[stage][f"recall@{n}"] == pytest.approx(got[f"recall@{n}"]), (stage, n)
    # The trained model is not the init: every weight of the backbone and of NetVLAD moved. (With
    # 15 test queries a recall gain is too noisy to assert here; the slow tests
    # test_short_training_raises_recall_on_held_out_data do it on 200 test queries, and the
    # README's 10-minute runs measure it.)
    init = load_model(summary["artefacts"]["init_model"], compile=False)
    trained = load_model(summary["artefacts"]["trained_model"], compile=False)
    moved = [float(np.max(np.abs(a.numpy() - b.numpy())))
             for a, b in zip(init.trainable_weights, trained.trainable_weights)]
    assert len(moved) >= 6 and min(moved) > 1e-4, moved
    for key in ("init_model", "trained_model", "recall_curve", "retrievals", "training_log"):
        assert Path(summary["artefacts"][key]).exists(), key
    assert (Path(summary["artefacts"]["saved_model"]) / "saved_model.pb").exists()
    # a second run resumes the finished run instead of retraining, and exports the next version
    assert main.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "saved" / "demo").iterdir() if p.is_dir()) == ["1", "2"]


# ------------------------------------------------- configurations, their checks and the report
def _recipe_config(**changes):
    """The saved configuration of a `tf_netvlad demo` run on the 'demo' data (seed 0), with `changes`."""
    from tf_netvlad.defaults import SEED
    from tf_netvlad.training.config import CPU_RECIPE, TrainConfig, config_json

    return config_json(TrainConfig(**dict(CPU_RECIPE, seed=SEED, **changes)))


def _checkpointed_run(run_dir, trained_on=None, train_split="0" * 16, config=None):
    """A run folder as `train()` leaves it after a checkpoint (`last/state.json`, which keeps the
    training split's fingerprint and the configuration), with the record `run_demo` writes when
    `trained_on` is given."""
    (run_dir / "last").mkdir(parents=True)
    state = {"train_split": train_split, "config": config or {}}
    (run_dir / "last" / "state.json").write_text(json.dumps(state))
    if trained_on is not None:
        from tf_netvlad.demo import run

        (run_dir / run.RUN_RECORD).write_text(json.dumps({"data_params": trained_on}))
    return run_dir


def test_check_demo_inputs_reuses_the_same_dataset_and_refuses_others(tmp_path, tiny_demo):
    from tf_netvlad.demo import run

    data = tiny_demo["root"]  # generated with config "demo", seed 0, scale 0.01
    same = run.data_params("demo", seed=0, scale=0.01)
    assert same == run.data_params("demo", scale=0.01)  # seed None is the preset's: 0
    run.check_demo_inputs(data, tmp_path / "run", same)
    for params, message in ((run.data_params("demo", seed=1, scale=0.01), r"'demo' dataset \(seed 1, scale 0.01\)"),
                            (run.data_params("demo"), r"'demo' dataset \(seed 0, scale 1\)"),
                            (run.data_params("small", scale=0.01), r"'small' dataset \(seed 11, scale 0.01\)")):
        with pytest.raises(ValueError, match=rf"^--data {data} holds the 'demo' dataset \(seed 0, scale 0.01\), "
                                             rf"not the {message} asked for: pass another --data folder, or "
                                             r"--config demo --seed 0 --scale 0.01 to reuse it"):
            run.check_demo_inputs(data, tmp_path / "run", params)
    # a manifest written before the configurations existed (no config/sizes/conditions/viewpoint)
    # is the demo's
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    manifest = json.loads(tiny_demo["manifest"].read_text())
    for key in ("config", "sizes", "conditions", "viewpoint", "layout"):
        del manifest[key]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    run.check_demo_inputs(legacy, tmp_path / "run", same)
    # no dataset yet: generated later
    run.check_demo_inputs(tmp_path / "new", tmp_path / "run", run.data_params("other"))
    with pytest.raises(ValueError, match="Unknown demo data configuration 'large'"):
        run.data_params("large")


def test_check_demo_inputs_refuses_a_run_trained_on_another_dataset(tmp_path):
    from tf_netvlad.demo import run

    small, other = run.data_params("small", scale=0.1), run.data_params("other", scale=0.1)
    run_dir = _checkpointed_run(tmp_path / "run", trained_on=small)
    run.check_demo_inputs(tmp_path / "data", run_dir, small)  # the same dataset: resumed
    with pytest.raises(ValueError, match=rf"^--run-dir {run_dir} holds a run trained on the 'small' dataset "
                                         r"\(seed 11, scale 0.1\), not on the 'other' dataset \(seed 7, "
                                         r"scale 0.1\): pass --fresh to start it over, or another --run-dir"):
        run.check_demo_inputs(tmp_path / "data", run_dir, other)
    run.check_demo_inputs(tmp_path / "data", run_dir, other, fresh=True)  # it will be deleted
    # no checkpoint (a run that failed before its first one): nothing to resume, the record is stale
    (run_dir / "last" / "state.json").unlink()
    run.check_demo_inputs(tmp_path / "data", run_dir, other)
    # an unreadable record is left to the checkpoint's split fingerprint (`run_demo`)
    bad = _checkpointed_run(tmp_path / "bad")
    (bad / run.RUN_RECORD).write_text("{not json")
    run.check_demo_inputs(tmp_path / "data", bad, other)


def test_run_demo_refuses_a_checkpoint_of_another_training_split_before_training(tmp_path, tiny_demo):
    """A run folder without the record (written by older tf_netvlad): the checkpoint's training-split
    fingerprint decides, once the dataset is there, before the model, the training or the export."""
    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.demo import run
    from tf_netvlad.training.checkpointing import split_fingerprint

    run_dir = _checkpointed_run(tmp_path / "run", config=_recipe_config())
    with pytest.raises(ValueError, match=rf"^--run-dir {run_dir} holds a run trained on another training "
                                         r"split than the 'demo' dataset \(seed 0, scale 0.01\)'s: pass "
                                         "--fresh to start it over"):
        run.run_demo(data_dir=tiny_demo["root"], run_dir=run_dir, saved_model_dir=tmp_path / "saved",
                     data_scale=0.01, progress=False, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["last"]
    # the same training split under other settings (a run of an older CPU recipe): named, with --fresh
    older = _checkpointed_run(tmp_path / "older", config=_recipe_config(db_queries=False),
                              train_split=split_fingerprint(load_split(tiny_demo["train_mat"])))
    with pytest.raises(ValueError, match=rf"^--run-dir {older} holds a run trained on the 'demo' dataset \(seed 0, "
                                         r"scale 0.01\) with other settings \(db_queries: checkpoint=False, "
                                         r"now=True\): pass --fresh to start it over"):
        run.run_demo(data_dir=tiny_demo["root"], run_dir=older, saved_model_dir=tmp_path / "saved",
                     data_scale=0.01, progress=False, verbose=0)
    assert sorted(p.name for p in older.iterdir()) == ["last"]


def test_fresh_never_empties_a_run_folder_another_writer_holds(tmp_path, tiny_demo):
    """`--fresh` deletes the old run under the folder's writer lock: a run still training there is
    named, and nothing of it is deleted."""
    import subprocess
    import sys

    from tf_netvlad.data.locking import DirectoryLockedError
    from tf_netvlad.demo import run

    run_dir = _checkpointed_run(tmp_path / "run")
    holder = subprocess.Popen(  # another process training in the folder: it holds the writer lock
        [sys.executable, "-c", "import sys, time; from tf_netvlad.data.locking import DirectoryLock; "
         "DirectoryLock(sys.argv[1], 'training run').acquire(); print('held', flush=True); time.sleep(120)",
         str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryLockedError, match="training run"):
            run.run_demo(data_dir=tiny_demo["root"], run_dir=run_dir, saved_model_dir=tmp_path / "saved",
                         data_scale=0.01, progress=False, verbose=0, fresh=True)
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / "last" / "state.json").is_file()
    assert not (tmp_path / "saved").exists()


def test_format_report_puts_thumbnails_beside_the_init_and_the_trained_model():
    from tf_netvlad.demo import run

    def results(r1, r5, dim):
        return {"recall@1": r1, "recall@5": r5, "num_queries": 8, "num_db": 40, "descriptor_dim": dim}

    report = {"config": "small", "data_params": {"seed": 11, "scale": 0.1, "image_size": [180, 240]},
              "thumbnails": {"grey": results(0.125, 0.25, 192), "rgb": results(0.25, 0.5, 576)},
              "before": results(0.375, 0.625, 256), "after": results(0.75, 1.0, 256),
              "training": {"status": "time_limit", "epochs_done": 3, "iterations": 1234, "wall_time_s": 90.0},
              "artefacts": {"dataset": "demo_data_small"}}
    lines = run.format_report(report).splitlines()
    assert "of the 'small' dataset, held out from the CPU recipe's tuning" in lines[1]
    assert lines[2] == "dataset: seed 11, scale 0.1, images 180x240"
    table = [line.split() for line in lines if line.strip().startswith(("N ", "1 ", "5 "))]
    assert table == [["N", "thumbnails", "grey", "thumbnails", "RGB", "k-means", "init", "trained"],
                     ["1", "12.50%", "25.00%", "37.50%", "75.00%"],
                     ["5", "25.00%", "50.00%", "62.50%", "100.00%"]]
    assert "training: time_limit after 3 epochs, 1,234 optimizer steps, 1.5 min" in lines
    del report["training"]["iterations"]  # a demo_summary.json of an earlier version
    assert "training: time_limit after 3 epochs, 1.5 min" in run.format_report(report).splitlines()
