"""The main job (`tf_netvlad demo`): generated data -> k-means init -> train -> evaluate -> export."""

import dataclasses
import logging
import os
from pathlib import Path

from tf_netvlad.defaults import SEED

log = logging.getLogger(__name__)


def run_demo(data_dir="demo_data", run_dir="runs/demo", saved_model_dir="saved_models/tiny_netvlad_demo",
             minutes=10.0, seed=0, data_scale=1.0, epochs=None, fresh=False, verbose=1, progress=True):
    """Runs the whole pipeline on the generated demo dataset and reports before/after recall@N.

    1. generates the demo dataset into `data_dir` (kept if already complete);
    2. trains the CPU recipe (`training.CPU_RECIPE`: tiny backbone, K=16, 96×128 images) on the
       train split with validation recall each epoch, for at most `minutes` of training
       (`run_dir/init.keras` is the k-means-initialised model, `run_dir/best.keras` the best by
       val recall@5). An interrupted run resumes from its last checkpoint when run again;
       `fresh=True` starts over;
    3. evaluates the initialised and the trained model on the held-out test split;
    4. exports the trained model as the next version under `saved_model_dir`;
    5. writes recall@N curves and a retrieval grid (PNG) and a JSON summary into `run_dir`.

    Returns:
        dict with `before` / `after` results, `artefacts` (paths) and the training summary.
    """
    from tf_netvlad.data import places
    from tf_netvlad.data.fileio import write_json
    from tf_netvlad.demo import dataset
    from tf_netvlad.evaluation import plots, recall
    from tf_netvlad.export import saved_model
    from tf_netvlad.models.model import load_model
    from tf_netvlad.training import train
    from tf_netvlad.training.config import CPU_RECIPE

    run_dir = Path(run_dir)
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    data = dataset.generate_demo_data(data_dir, seed=seed, scale=data_scale, progress=progress)
    train_split = places.load_split(data["train_mat"])
    val_split = places.load_split(data["val_mat"])
    test_split = places.load_split(data["test_mat"])

    overrides = dict(CPU_RECIPE, time_limit_s=60.0 * minutes, seed=SEED + seed)
    if epochs is not None:
        overrides["epochs"] = epochs
    config = dataclasses.replace(train.TrainConfig(), **overrides)
    summary = train.train(train_split, val_split, out_dir=run_dir, config=config, resume=True,
                             verbose=verbose, progress=progress)

    image_size = config.image_size
    results, ids = {}, {}
    for stage, file in (("before", "init.keras"), ("after", "best.keras")):
        model = load_model(run_dir / file, compile=False)
        results[stage], ids[stage] = recall.evaluate(
            model, test_split, image_size=image_size, ns=recall.DEFAULT_RECALL_NS, progress=progress,
            return_ids=True)
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
    plots.plot_recall_curve([results["before"], results["after"]], artefacts["recall_curve"],
                            labels=["k-means init", "trained"], title="demo test split: recall@N")
    _plot_retrievals(test_split, ids["after"], artefacts["retrievals"])
    try:
        saved = saved_model.export_saved_model(run_dir / "best.keras", saved_model_dir, image_size=image_size,
                                          model_name=Path(saved_model_dir).name)
    except ImportError as err:  # tensorflow-serving-api missing: export without the warmup file
        log.warning("%s Exporting without TF Serving warmup requests.", err)
        saved = saved_model.export_saved_model(run_dir / "best.keras", saved_model_dir, image_size=image_size,
                                          model_name=Path(saved_model_dir).name, warmup=False)
    artefacts["saved_model"] = str(saved)
    report = {"before": results["before"], "after": results["after"], "artefacts": artefacts,
              "training": {k: summary.get(k) for k in ("status", "epochs_done", "wall_time_s", "best")}}
    artefacts["summary"] = str(write_json(report, run_dir / "demo_summary.json"))
    return report


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
    """The before/after table and the artefact list printed by `tf_netvlad demo`."""
    from tf_netvlad.evaluation.report import format_recall_table

    lines = ["", "Demo test split (held out): recall@N before and after training", ""]
    lines.append(format_recall_table(
        [report["before"], report["after"]], labels=["k-means init", "trained"]))
    training = report["training"]
    lines += ["", f"training: {training['status']} after {training['epochs_done']} epochs, "
                  f"{training['wall_time_s'] / 60:.1f} min", "", "artefacts:"]
    width = max(len(k) for k in report["artefacts"])
    for key, value in report["artefacts"].items():
        lines.append(f"  {key.ljust(width)}  {os.path.relpath(value) if os.path.isabs(value) else value}")
    return "\n".join(lines)
