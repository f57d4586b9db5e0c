"""recall@N of a model on a split, with the JSON, curve and retrieval-grid outputs the CLI and notebooks show."""

from tf_netvlad.defaults import EXTRACT_BATCH_SIZE


def evaluate_model(model, split, root=None, image_size=None, ns=None, batch_size=EXTRACT_BATCH_SIZE,
                   json_path=None, plot_path=None, retrievals_path=None, num_examples=8,
                   top_k=5, label=None, progress=True, **protocol_options):
    """recall@N of `model` on `split`.

    `image_size` (parsed there) and `protocol_options` go to `evaluation.recall.evaluate`
    (`protocol`, `query_image_size`, `approximate`, `approx_train_size`, `approx_nprobe`,
    `descriptor_dtype`, `memmap_dir`, `on_error`).
    Optionally writes the results as JSON, a recall@N curve PNG, and a PNG grid of the first
    `num_examples` queries with their top `top_k` retrieved images (green: within the positive
    radius, red: not; after panorama NMS for Tokyo 24/7).
    """
    import numpy as np

    from tf_netvlad.data.fileio import write_json
    from tf_netvlad.evaluation import plots, recall, recall_metrics

    results, ids = recall.evaluate(
        model, split, root=root, image_size=image_size,
        ns=ns or recall_metrics.DEFAULT_RECALL_NS, batch_size=batch_size, progress=progress,
        return_ids=True, **protocol_options,
    )
    results["model"] = label or model.name
    if json_path:
        write_json(results, json_path)
    if plot_path:
        plots.plot_recall_curve(results, plot_path, labels=[results["model"]])
    if retrievals_path:
        positives = split.positives()
        shown = np.flatnonzero((ids >= 0).any(axis=1))[:num_examples]  # skips unreadable queries
        top = ids[shown, :top_k]
        top = top[:, : int(np.argmin(np.append((top >= 0).all(axis=0), False)))]  # no -1 slots
        plots.plot_retrievals(
            [split.query_paths[q] for q in shown],
            [[split.db_paths[j] for j in row] for row in top],
            [np.isin(row, positives[q]) for q, row in zip(shown, top)],
            retrievals_path, root=root if root is not None else split.root,
        )
    return results
