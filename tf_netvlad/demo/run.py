"""The main job (`tf_netvlad demo`): generated data -> k-means init -> train -> evaluate -> export.

`run_demo(config=NAME)` runs it on one of the generated configurations (`demo.configs.CONFIGS`):
"demo", the one the CPU recipe was tuned on, or a held-out one ("small", "other"), so the recipe
can be seen working on data it was not tuned on. Each configuration has its own default folders
(`default_paths`): runs on different configurations never share a dataset, a run or a SavedModel
base. The report puts the trained model beside two baselines on the held-out test split, raw-pixel
thumbnails (no learning, `baseline.raw_pixel_recall`) and the k-means-initialised model.

A run folder records the dataset it trains on (`RUN_RECORD`), so a rerun with another
configuration, seed or scale is refused instead of resuming a run trained on other data.
`check_demo_inputs` makes these checks without TensorFlow (the CLI runs it before importing it).
"""

import dataclasses
import json
import logging
import os
from pathlib import Path

from tf_netvlad.defaults import SEED

log = logging.getLogger(__name__)

# In the run folder: the generation parameters of the dataset the run trains on.
RUN_RECORD = "demo_data.json"
# The generation parameters a run is compared on (those `folder.read_params` returns).
_PARAM_KEYS = ("config", "seed", "image_size", "scale", "db_spacing_m", "jpeg_quality", "sizes",
               "conditions", "viewpoint")
# Parameters `tf_netvlad demo` leaves at the configuration's value -> the `demo-data` flag that sets them.
_DEMO_DATA_ONLY = {"image_size": "--image-size", "db_spacing_m": "--db-spacing", "jpeg_quality": None,
                   "sizes": "--*-db / --*-queries", "conditions": "--conditions", "viewpoint": "--viewpoint"}
# The raw-pixel baseline, (W, H): the 16x12 thumbnails of the README and benchmarks/RESULTS.md.
THUMBNAIL_SIZE = (16, 12)


def default_paths(config="demo"):
    """The default dataset, run and SavedModel base folders of a configuration.

    "demo" keeps the historical `demo_data`, `runs/demo` and `saved_models/tiny_netvlad_demo`; any
    other configuration appends `_<config>` to each (`demo_data_small`, `runs/demo_small`, ...).
    """
    suffix = "" if config == "demo" else f"_{config}"
    return {"data_dir": f"demo_data{suffix}", "run_dir": f"runs/demo{suffix}",
            "saved_model_dir": f"saved_models/tiny_netvlad_demo{suffix}"}


def data_params(config="demo", seed=None, scale=1.0):
    """The generation parameters of the dataset a demo run uses, in the JSON form compared with a
    dataset's `manifest.json` (`folder.read_params`) and a run's `RUN_RECORD`.

    `seed` None takes the configuration's; a ValueError names a bad value (before anything runs).
    """
    from tf_netvlad.demo import configs

    return _comparable(configs.resolve_params(config=config, seed=seed, scale=scale))


def _comparable(params):
    return json.loads(json.dumps({key: params.get(key) for key in _PARAM_KEYS}))


def _describe(params):
    """"the 'other' dataset (seed 7, scale 0.05)", naming any option `demo` does not set."""
    text = f"the {params['config']!r} dataset (seed {params['seed']}, scale {params['scale']:g})"
    try:
        preset = data_params(params["config"], params["seed"], params["scale"])
    except (ValueError, TypeError, KeyError):
        return text + " with other options"
    other = [flag or key for key, flag in _DEMO_DATA_ONLY.items() if params.get(key) != preset.get(key)]
    return text + (f" with other demo-data options ({', '.join(other)})" if other else "")


def _settable(params):
    """The `demo` flags that give `params`, or None when `demo-data` options made the dataset."""
    try:
        if data_params(params["config"], params["seed"], params["scale"]) != params:
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return f"--config {params['config']} --seed {params['seed']} --scale {params['scale']:g}"


def _has_checkpoint(run_dir):
    return (Path(run_dir) / "last" / "state.json").is_file()


def _read_record(run_dir):
    """The dataset parameters a run folder recorded, or None (no record, or unreadable)."""
    try:
        record = json.loads((Path(run_dir) / RUN_RECORD).read_text())
        return _comparable(record["data_params"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_demo_inputs(data_dir, run_dir, params, fresh=False):
    """Refuses, before any work, a dataset folder or a run folder that holds other data.

    Raises a one-line ValueError naming the folder, what it holds and the flags to use when
    `data_dir` holds a generated dataset with parameters other than `params` (from `data_params`;
    `tf_netvlad demo` would otherwise replace it), or when `run_dir` holds a run (a checkpoint)
    that recorded another dataset and `fresh` is False. A dataset with the same parameters is
    reused. Imports neither TensorFlow nor the model code.
    """
    from tf_netvlad.demo import folder

    recorded = folder.read_params(data_dir)
    if recorded is not None and _comparable(recorded) != params:
        recorded = _comparable(recorded)
        settable = _settable(recorded)
        reuse = (f"or {settable} to reuse it" if settable else
                 f"or train on it with `tf_netvlad train --dataset {os.path.join(data_dir, 'demo_train.mat')} "
                 f"--val {os.path.join(data_dir, 'demo_val.mat')} --out RUN_DIR`")
        raise ValueError(f"--data {data_dir} holds {_describe(recorded)}, not "
                         f"{_describe(params)} asked for: pass another --data folder, {reuse} "
                         "(Python: data_dir=, config=, seed=, data_scale=).")
    if fresh or not _has_checkpoint(run_dir):
        return
    trained_on = _read_record(run_dir)
    if trained_on is not None and trained_on != params:
        raise ValueError(_run_mismatch(run_dir, f"{_describe(trained_on)}, not on {_describe(params)}"))


def _run_mismatch(run_dir, what):
    return (f"--run-dir {run_dir} holds a run trained on {what}: pass --fresh to start it over, or "
            "another --run-dir (Python: fresh=True, run_dir=).")


def _empty_run_dir(run_dir):
    """`--fresh`: empties `run_dir` under its writer lock, so a run training in it is never deleted
    (its `DirectoryLockedError` names the process instead)."""
    import shutil

    from tf_netvlad.data.locking import LOCK_FILE, DirectoryLock

    with DirectoryLock(run_dir, "training run"):
        for entry in os.scandir(run_dir):
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _checkpoint_difference(error, params):
    """What a refused checkpoint (`training.checkpointing.ResumeMismatch`) was trained on, in words."""
    settings = "; ".join(error.settings)
    if error.split_differs:
        what = f"another training split than {_describe(params)}'s"
        return what + (f" and other settings ({settings})" if settings else "")
    return f"{_describe(params)} with other settings ({settings})"


def _record_callback(run_dir, params, root):
    """A Keras callback that writes `RUN_RECORD` when training starts: inside `train()`, which then
    holds the run folder's writer lock and has checked a resumed checkpoint's training split."""
    import keras

    from tf_netvlad.data.fileio import write_json

    class RecordDataset(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            write_json({"data_params": params, "dataset": str(root)}, Path(run_dir) / RUN_RECORD)

    return RecordDataset()


def thumbnail_recalls(split, ns):
    """recall@N of raw-pixel thumbnails on `split`: `{"grey": results, "rgb": results}`, each a
    results dict (`"recall@N"` keys).

    `baseline.raw_pixel_recalls` with the 16x12 thumbnails (`THUMBNAIL_SIZE`), grey and RGB (every
    image read once): a nearest-neighbour search on L2-normalised pixels, no learning. It counts
    every query (a query without a positive is a miss); every query of a generated dataset has a
    positive.
    """
    from tf_netvlad.demo import baseline

    width, height = THUMBNAIL_SIZE
    recalls = baseline.raw_pixel_recalls(split, ns=ns, size=THUMBNAIL_SIZE, modes=("grey", "rgb"))
    out = {}
    for mode, channels, label in (("grey", 1, "grey"), ("rgb", 3, "RGB")):
        results = {f"recall@{n}": recalls[mode][n] for n in ns}
        results.update(num_queries=split.num_queries, num_db=split.num_db,
                       descriptor_dim=width * height * channels,
                       method=f"raw {width}x{height} {label} pixel thumbnails")
        out[mode] = results
    return out


def run_demo(data_dir=None, run_dir=None, saved_model_dir=None, minutes=10.0, seed=None, data_scale=1.0,
             epochs=None, fresh=False, verbose=1, progress=True, config="demo"):
    """Runs the whole pipeline on a generated dataset and reports recall@N against two baselines.

    1. generates the dataset of configuration `config` into `data_dir` (reused if already
       complete; a folder holding a dataset with other parameters is refused);
    2. trains the CPU recipe (`training.CPU_RECIPE`: tiny backbone, K=16, 96×128 images) on the
       train split with validation recall each epoch, for at most `minutes` of training
       (`run_dir/init.keras` is the k-means-initialised model, `run_dir/best.keras` the best by
       val recall@5). An interrupted run resumes from its last checkpoint when run again (a run
       folder trained on another dataset is refused); `fresh=True` starts over;
    3. evaluates raw-pixel thumbnails (grey and RGB), the initialised and the trained model on the
       held-out test split;
    4. exports the trained model as the next version under `saved_model_dir`;
    5. writes recall@N curves and a retrieval grid (PNG) and a JSON summary into `run_dir`.

    Args:
        data_dir, run_dir, saved_model_dir: None takes the configuration's (`default_paths`).
        minutes: training time limit.
        seed: the dataset seed (None: the configuration's, `configs.CONFIGS`); the training seed
            is `defaults.SEED + ` the dataset seed.
        data_scale: multiplies the dataset's sizes (`dataset.generate_demo_data(scale=...)`).
        epochs: refresh cycles (None: the CPU recipe's).
        config: a name of `configs.CONFIGS`: "demo" (the CPU recipe was tuned on it), "small", "other".

    Returns:
        dict with `config`, `data_params`, `thumbnails` (`grey` / `rgb`), `before` / `after`
        results, `artefacts` (paths) and the training summary (also `run_dir/demo_summary.json`).
    """
    paths = default_paths(config)
    data_dir = paths["data_dir"] if data_dir is None else data_dir
    run_dir = Path(paths["run_dir"] if run_dir is None else run_dir)
    saved_model_dir = paths["saved_model_dir"] if saved_model_dir is None else saved_model_dir
    params = data_params(config, seed, data_scale)
    check_demo_inputs(data_dir, run_dir, params, fresh=fresh)  # before anything is deleted or made

    from tf_netvlad.data import split_loading
    from tf_netvlad.data.fileio import write_json
    from tf_netvlad.demo import dataset
    from tf_netvlad.evaluation import plots, recall, recall_metrics
    from tf_netvlad.export import saved_model
    from tf_netvlad.models.model_files import load_model
    from tf_netvlad.training import train
    from tf_netvlad.training.checkpointing import ResumeMismatch
    from tf_netvlad.training.config import CPU_RECIPE

    if fresh and run_dir.exists():
        _empty_run_dir(run_dir)
    data = dataset.generate_demo_data(data_dir, config=config, seed=params["seed"], scale=params["scale"],
                                      progress=progress)
    train_split = split_loading.load_split(data["train_mat"])
    val_split = split_loading.load_split(data["val_mat"])
    test_split = split_loading.load_split(data["test_mat"])

    overrides = dict(CPU_RECIPE, time_limit_s=60.0 * minutes, seed=SEED + params["seed"])
    if epochs is not None:
        overrides["epochs"] = epochs
    train_config = dataclasses.replace(train.TrainConfig(), **overrides)
    try:
        summary = train.train(train_split, val_split, out_dir=run_dir, config=train_config, resume=True,
                              verbose=verbose, progress=progress,
                              callbacks=[_record_callback(run_dir, params, data["root"])])
    except ResumeMismatch as error:  # a run folder without the record: its checkpoint decides
        raise ValueError(_run_mismatch(run_dir, _checkpoint_difference(error, params))) from error

    image_size = train_config.image_size
    ns = recall_metrics.DEFAULT_RECALL_NS
    thumbnails = thumbnail_recalls(test_split, ns)
    results, ids = {}, {}
    for stage, file in (("before", "init.keras"), ("after", "best.keras")):
        model = load_model(run_dir / file, compile=False)
        results[stage], ids[stage] = recall.evaluate(
            model, test_split, image_size=image_size, ns=ns, progress=progress, return_ids=True)
        results[stage]["model"] = str(run_dir / file)
    artefacts = {
        "dataset": str(data["root"]),
        "init_model": str(run_dir / "init.keras"),
        "trained_model": str(run_dir / "best.keras"),
        "training_log": str(run_dir / "logs" / "train.csv"),
        "tensorboard": str(run_dir / "logs" / "tensorboard"),
        "recall_curve": str(run_dir / "test_recall.png"),
        "retrievals": str(run_dir / "test_retrievals.png"),
    }
    curves, labels = _columns({"thumbnails": thumbnails, **results})
    plots.plot_recall_curve(curves, artefacts["recall_curve"], labels=labels,
                            title=f"{config} test split: recall@N")
    _plot_retrievals(test_split, ids["after"], artefacts["retrievals"])
    try:
        saved = saved_model.export_saved_model(run_dir / "best.keras", saved_model_dir, image_size=image_size,
                                               model_name=Path(saved_model_dir).name)
    except ImportError as err:  # tensorflow-serving-api missing: export without the warmup file
        log.warning("%s Exporting without TF Serving warmup requests.", err)
        saved = saved_model.export_saved_model(run_dir / "best.keras", saved_model_dir, image_size=image_size,
                                               model_name=Path(saved_model_dir).name, warmup=False)
    artefacts["saved_model"] = str(saved)
    report = {"config": config, "data_params": params, "thumbnails": thumbnails,
              "before": results["before"], "after": results["after"], "artefacts": artefacts,
              "training": {k: summary.get(k) for k in ("status", "epochs_done", "iterations", "wall_time_s", "best")}}
    artefacts["summary"] = str(write_json(report, run_dir / "demo_summary.json"))
    return report


def _columns(report):
    """The results shown side by side, baselines first, and their labels."""
    runs, labels = [], []
    for key, label in (("grey", "thumbnails grey"), ("rgb", "thumbnails RGB")):
        if key in report.get("thumbnails", {}):
            runs.append(report["thumbnails"][key])
            labels.append(label)
    return runs + [report["before"], report["after"]], labels + ["k-means init", "trained"]


def _plot_retrievals(split, ids, path, num_queries=8, top_k=5):
    import numpy as np

    from tf_netvlad.evaluation import plots

    positives = split.positives()
    # Spread the examples over the split so day, dusk and night queries appear.
    shown = np.linspace(0, split.num_queries - 1, min(num_queries, split.num_queries)).astype(int)
    top = [ids[q, :top_k] for q in shown]
    plots.plot_retrievals(
        [split.query_paths[q] for q in shown],
        [[split.db_paths[j] for j in row] for row in top],
        [np.isin(row, positives[q]) for q, row in zip(shown, top)],
        path, root=split.root,
    )


def format_report(report):
    """The recall@N table (thumbnails, k-means init, trained) and the artefact list printed by
    `tf_netvlad demo`."""
    from tf_netvlad.evaluation.report import format_recall_table

    config = report.get("config", "demo")
    params = report.get("data_params") or {}
    held_out = "" if config == "demo" else ", held out from the CPU recipe's tuning"
    lines = ["", f"Test split (held out) of the {config!r} dataset{held_out}: recall@N of raw-pixel "
                 "thumbnails, the k-means init and the trained model", ""]
    if params:
        lines[-1:] = [f"dataset: seed {params.get('seed')}, scale {params.get('scale'):g}, images "
                      f"{'x'.join(str(v) for v in params.get('image_size') or ())}", ""]
    runs, labels = _columns(report)
    lines.append(format_recall_table(runs, labels=labels))
    training = report["training"]
    steps = training.get("iterations")  # absent from a summary written before it was recorded
    lines += ["", f"training: {training['status']} after {training['epochs_done']} epochs"
                  + (f", {steps:,} optimizer steps" if steps is not None else "")
                  + f", {training['wall_time_s'] / 60:.1f} min", "", "artefacts:"]
    width = max(len(k) for k in report["artefacts"])
    for key, value in report["artefacts"].items():
        lines.append(f"  {key.ljust(width)}  {os.path.relpath(value) if os.path.isabs(value) else value}")
    return "\n".join(lines)
