"""The end of a training run: `best.keras` when validation chose none, the whitened best model,
and `summary.json` (what `train` returns: status, cycles, steps, best and initial validation
recall, counts of queries and images, the process's streams of images (`models.streams`), files, wall
time, the config).
"""

import time

from tf_netvlad.data.fileio import write_json
from tf_netvlad.models.initialization import fit_whitening
from tf_netvlad.models.model_files import load_model, save_model
from tf_netvlad.models.streams import stream_count
from tf_netvlad.training.config import config_json


def finish_run(cfg, model, checkpoint_cb, train_split, val_split, root, out_dir, status, init_val,
               init_stats, miner, pipeline, start_time, progress, group=None):
    """The run's summary dict, after the chief wrote `best.keras` (the last model when nothing
    was validated), the whitened best model (`cfg.whiten`) and `summary.json`. A worker other than
    the chief writes nothing and returns its own counts."""
    worker = None if group is None else {"index": group.index, "num_workers": group.num_workers,
                                         "is_chief": group.is_chief}
    in_memory = 0 if pipeline.images is None else len(pipeline.images)
    if group is not None and not group.is_chief:  # writes nothing; the chief's summary is the run's
        return {"status": status, "worker": worker, "epochs_done": len(checkpoint_cb.history),
                "iterations": int(model.optimizer.iterations.numpy()), "last_mining": miner.last_stats,
                "images_in_memory": in_memory, "files": {}, "wall_time_s": time.monotonic() - start_time}
    if val_split is None or not (out_dir / "best.keras").exists():
        save_model(model, out_dir / "best.keras")
    files = {"init": str(out_dir / "init.keras"), "best": str(out_dir / "best.keras"),
             "last": str(out_dir / "last"), "csv_log": str(out_dir / "logs" / "train.csv"),
             "tensorboard": str(out_dir / "logs" / "tensorboard")}
    whitened = None
    if cfg.whiten:
        best = load_model(out_dir / "best.keras", compile=False)
        white = fit_whitening(best, train_split.db_paths, root=root, image_size=cfg.image_size,
                              num_components=cfg.whiten, max_images=cfg.whiten_max_images, seed=cfg.seed,
                              batch_size=cfg.cache_batch_size, progress=progress)
        path = save_model(white, out_dir / f"best_white{cfg.whiten}.keras")
        files["best_whitened"] = str(path)
        whitened = str(path)
    history = checkpoint_cb.history
    summary = {
        "status": status,
        "epochs_done": len(history),
        "epochs_requested": cfg.epochs,
        "passes_requested": cfg.passes,
        "cycles_planned": miner.schedule.num_cycles(cfg.passes, cfg.epochs),
        "iterations": int(model.optimizer.iterations.numpy()),
        "queries_per_epoch": miner.cycle_size,
        "refresh_slowdown": miner.schedule.slowdown,
        "training_queries": len(miner.valid_queries),
        "queries_without_positives": miner.dropped_queries,
        "tuples_skipped_bad_images": pipeline.skipped,
        "images_skipped_in_cache": int(len(miner.bad_db) + len(miner.bad_queries)),
        "images_in_memory": in_memory,
        "init_val": init_val,
        "best": checkpoint_cb.best,
        "final": history[-1] if history else None,
        "init_stats": init_stats,
        "whitened_model": whitened,
        "last_mining": miner.last_stats,
        "worker": worker,
        "cpu_streams": stream_count(),
        "files": files,
        "wall_time_s": time.monotonic() - start_time,
        "config": config_json(cfg),
    }
    write_json(summary, out_dir / "summary.json")
    return summary
