"""Executes notebooks/train_netvlad.ipynb top to bottom on a tiny configuration, so it cannot rot.

The file is not changed: probe cells are added to the executed copy. One, after the training
set-up cell, scripts the validation recall@1 of the three refresh cycles (0.2, 0.6, 0.4: the best
cycle is neither the first nor the last) and keeps a copy of the weights after every cycle, so the
test can tell which cycle's weights the notebook kept, saved and evaluated. The last one reports
what the notebook computed. The tiny configuration: the shared `tiny_demo` data (0.01-scale demo:
25 training queries, 5 test queries) and cycles of 8 queries (`TF_NETVLAD_NB_RECIPE`), i.e. 2 steps
of 4 tuples each.
"""

import json
import math
import re
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest
from PIL import Image

import tf_netvlad
from tf_netvlad.data import split_loading
from tf_netvlad.demo import dataset as demo_data
from tf_netvlad.demo import folder

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_netvlad.ipynb"
CYCLES, CYCLE_QUERIES = 3, 8
# validation recalls of the 3 cycles, scripted: @5 prefers cycle 1, @1 cycle 0 (the rule is @5 first)
SCRIPTED_VAL_RECALL5 = [0.2, 0.6, 0.4]
SCRIPTED_VAL_RECALL1 = [0.9, 0.1, 0.5]

KEEP_INIT = "_probe_init = [w.copy() for w in model.get_weights()]"
# After the set-up cell: the measured validation recall@5 and @1 are replaced by scripted ones (the
# selection rule is what is tested; the measurement is `ValidationRecall`'s, tested elsewhere),
# and the weights after every cycle are kept.
SCRIPT_VALIDATION = f"""
_probe_cycle_weights, _probe_measured = [], []
_probe_val_end = val_cb.on_epoch_end
def _probe_scripted_val(epoch, logs=None):
    _probe_val_end(epoch, logs)
    _probe_measured.append(dict(logs))
    logs["val_recall@5"] = {SCRIPTED_VAL_RECALL5}[epoch]
    logs["val_recall@1"] = {SCRIPTED_VAL_RECALL1}[epoch]
    _probe_cycle_weights.append([w.copy() for w in model.get_weights()])
val_cb.on_epoch_end = _probe_scripted_val
"""
REPORT = """
import json as _json
import numpy as _np
_same = lambda a, b: all(_np.array_equal(x, y) for x, y in zip(a, b))
_saved = tf_netvlad.load_model(best_path).get_weights()
_batch = next(iter(pipeline.dataset()))
model.set_weights(_probe_init)
_metrics_init = model.test_on_batch(_batch, return_dict=True)
model.set_weights(_saved)
_metrics_trained = model.test_on_batch(_batch, return_dict=True)
print("PROBE " + _json.dumps({
    "weights": [w.path for w in model.weights],
    "moved": [float(_np.abs(a - b).max()) for a, b in zip(_probe_init, _saved)],
    "saved_is_cycle": [_same(_saved, w) for w in _probe_cycle_weights],
    "alpha": stats["alpha"], "assignment_ratio": stats["assignment_ratio"],
    "thumbnails": thumbnails,
    "before": {k: v for k, v in before.items() if k.startswith("recall@")},
    "after": {k: v for k, v in after.items() if k.startswith("recall@")},
    "measured_val": [{k: float(v) for k, v in m.items()} for m in _probe_measured],
    "batch_init": {k: float(v) for k, v in _metrics_init.items()},
    "batch_trained": {k: float(v) for k, v in _metrics_trained.items()},
}))
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _texts(cell):
    return "".join(out.get("text", "") for out in cell.get("outputs", []))


def _cell(notebook, snippet):
    return next(c for c in notebook.cells if c.cell_type == "code" and snippet in c.source)


def _thumbnail_recall(split, ns):
    """Independent NumPy reference of the raw-thumbnail baseline: 16x12 grey thumbnails (PIL
    bilinear), L2-normalised, nearest neighbours by dot product, a hit within `pos_dist_thr`."""
    def thumbs(paths):
        rows = []
        for path in paths:
            with Image.open(Path(split.root) / path) as im:
                rows.append(np.asarray(im.convert("L").resize((16, 12), Image.BILINEAR), np.float64).ravel())
        x = np.stack(rows)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    order = np.argsort(-(thumbs(split.query_paths) @ thumbs(split.db_paths).T), axis=1, kind="stable")
    dist = np.linalg.norm(split.query_utm[:, None] - split.db_utm[None], axis=2)
    hits = np.take_along_axis(dist, order, axis=1) <= split.pos_dist_thr
    return {f"recall@{n}": float(np.mean(hits[:, :n].any(axis=1))) for n in ns}


def _table_rows(text):
    """`{N: [cells]}` of a `format_recall_table` printout."""
    return {int(line.split()[0]): line.split()[1:] for line in text.splitlines()
            if line.split()[:1] and line.split()[0].isdigit()}


@pytest.mark.slow
def test_training_notebook_runs(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # The notebook asks for the same parameters, so it reuses the shared data (other parameters
    # would regenerate it in place).
    params = folder.read_params(tiny_demo["root"])
    assert params["config"] == "demo" and params["seed"] == demo_data.CONFIGS["demo"]["seed"], params
    monkeypatch.setenv("TF_NETVLAD_NB_DATA", str(tiny_demo["root"]))
    monkeypatch.setenv("TF_NETVLAD_NB_SCALE", repr(params["scale"]))
    monkeypatch.setenv("TF_NETVLAD_NB_OUT", str(out))
    monkeypatch.setenv("TF_NETVLAD_NB_CYCLES", str(CYCLES))
    monkeypatch.setenv("TF_NETVLAD_NB_TIME_LIMIT", "3600")  # the cycles end the run, not the clock
    monkeypatch.setenv("TF_NETVLAD_NB_RECIPE", json.dumps({"cache_refresh_queries": CYCLE_QUERIES}))
    monkeypatch.delenv("TF_NETVLAD_NB_VERBOSE", raising=False)
    monkeypatch.delenv("TF_NETVLAD_NB_CONFIG", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    init_cell = notebook.cells.index(_cell(notebook, "initialize_netvlad("))
    notebook.cells.insert(init_cell + 1, nbformat.v4.new_code_cell(KEEP_INIT))
    setup_cell = notebook.cells.index(_cell(notebook, "ValidationRecall("))
    notebook.cells.insert(setup_cell + 1, nbformat.v4.new_code_cell(SCRIPT_VALIDATION))
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = ANSI.sub("", "".join(_texts(c) for c in notebook.cells if c.cell_type == "code"))
    probe = json.loads(_texts(notebook.cells[-1]).split("PROBE ", 1)[1])

    # Keras output: every cycle's fit declares its length (2 steps: 8 queries in batches of 4), so
    # verbose=2 prints "2/2 - ..." once per cycle (it prints no step count for an unknown
    # length), and no fit runs out of data.
    assert "ran out of data" not in outputs and "Unknown" not in outputs
    train = split_loading.load_split(tiny_demo["train_mat"])
    with_positive = int(np.sum((np.linalg.norm(train.query_utm[:, None] - train.db_utm[None], axis=2) ** 2
                                <= train.non_triv_pos_dist_sq_thr).any(axis=1)))
    steps = math.ceil(min(CYCLE_QUERIES, with_positive) / tf_netvlad.CPU_RECIPE["batch_size"])
    assert steps == 2
    assert len(re.findall(rf"^{steps}/{steps} - \d+s", outputs, flags=re.M)) == CYCLES, outputs

    # Per-cycle log and selection, as `tf_netvlad train` (`callbacks.SELECTED_BY`): cycle 1 has the
    # scripted best val recall@5 (0.6; the worst @1), so it is kept: best.keras holds its weights
    # (not the last cycle's, nor the best-@1 first one), and the final evaluation used them.
    summary = json.loads((out / "notebook_summary.json").read_text())
    cycles = summary["cycles"]
    assert [c["cycle"] for c in cycles] == list(range(CYCLES)) and summary["stopped_by"] == "cycles"
    assert [c["val_recall@5"] for c in cycles] == SCRIPTED_VAL_RECALL5
    assert [c["val_recall@1"] for c in cycles] == SCRIPTED_VAL_RECALL1
    assert [c["steps"] for c in cycles] == [steps] * CYCLES and all(c["complete"] for c in cycles)
    assert summary["best_cycle"] == 1 and summary["selected_by"] == ["val_recall@5", "val_recall@1"]
    assert probe["saved_is_cycle"] == [False, True, False]
    for record, measured in zip(cycles, probe["measured_val"]):
        assert record["val_recall@10"] == measured["val_recall@10"]
    assert "best: cycle 1 (val recall@5 0.600, @1 0.100)" in outputs
    # The learning rate of every cycle, by hand: "step" halves every 1.5 passes over the 25 queries
    # (cycle c starts after 8c/25 passes: never); "budget" is the warm-up + cosine over the
    # 3 x 2 = 6 steps the cycles allow (the 1-hour clock is not the binding budget), read at the
    # cycle's last step (iteration 2c + 1).
    lr = tf_netvlad.CPU_RECIPE["lr"]
    if tf_netvlad.CPU_RECIPE["lr_schedule"] == "step":
        expected = [lr * 0.5 ** math.floor(CYCLE_QUERIES * c / with_positive / 1.5) for c in range(CYCLES)]
    else:
        def budget(progress, warmup=0.05, final=0.02):
            if progress < warmup:
                return lr * (0.1 + 0.9 * progress / warmup)
            return lr * (final + (1 - final) * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2)
        expected = [budget((steps * c + steps - 1) / (steps * CYCLES)) for c in range(CYCLES)]
    assert [c["lr"] for c in cycles] == pytest.approx(expected, rel=1e-5)
    assert summary["recipe"]["cache_refresh_queries"] == CYCLE_QUERIES
    assert {k: summary["recipe"][k] for k in ("lr", "num_negatives", "augment", "lr_schedule")} == {
        k: tf_netvlad.CPU_RECIPE[k] for k in ("lr", "num_negatives", "augment", "lr_schedule")}

    # Training changed every weight (the tiny backbone's convs and norms, the assignment kernel and
    # the centroids) away from the k-means initialisation, and the printed init line is the k-means
    # result (ratio 100 by the alpha rule).
    assert len(probe["moved"]) == len(probe["weights"]) >= 10
    assert min(probe["moved"]) > 1e-5, dict(zip(probe["weights"], probe["moved"]))
    printed = re.search(r"alpha = ([\d.]+), mean top-1/top-2 assignment ratio = ([\d.]+)", outputs)
    assert float(printed.group(1)) == pytest.approx(probe["alpha"], abs=0.06)
    assert float(printed.group(2)) == pytest.approx(100.0, abs=0.1)
    init, trained = probe["batch_init"], probe["batch_trained"]
    for key in ("positive_d2", "negative_d2"):
        assert trained[key] != pytest.approx(init[key], rel=1e-3, abs=1e-4), (key, init, trained)

    # The test table: thumbnails (against an independent NumPy reference), k-means init, trained.
    test = split_loading.load_split(tiny_demo["test_mat"])
    ns = (1, 5, 10, 20)
    assert probe["thumbnails"] == pytest.approx(_thumbnail_recall(test, ns))
    rows = _table_rows(_texts(_cell(notebook, "format_recall_table([thumbnails, before, after]")))
    assert sorted(rows) == list(ns)
    for n in ns:
        assert rows[n] == [f"{100 * probe[s][f'recall@{n}']:.2f}%" for s in ("thumbnails", "before", "after")]
    assert summary["test"]["trained"] == probe["after"] and summary["test"]["init"] == probe["before"]
    assert (out / "recall.png").stat().st_size > 1000
    assert (out / "training.png").stat().st_size > 1000
    assert (out / "retrievals.png").stat().st_size > 1000
    assert (out / "saved_model" / "1" / "saved_model.pb").exists()
    assert "SavedModel:" in outputs
