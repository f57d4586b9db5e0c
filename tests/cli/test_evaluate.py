"""`tf_netvlad evaluate` and `evaluate-map` (`tf_netvlad.cli.evaluate`)."""

import json
import os

import numpy as np
import pytest

from tf_netvlad.cli import main
from tf_netvlad.evaluation.recall_metrics import DEFAULT_RECALL_NS, REFERENCE_RECALL_NS


def test_evaluate_off_the_shelf_with_backbone(tiny_demo, tmp_path):
    out_json = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--backbone", "tiny",
                     "--num-clusters", "4", "--json", str(out_json)]) == 0
    assert 0.0 <= json.loads(out_json.read_text())["recall@1"] <= 1.0


def test_dataset_without_queries_is_refused(tmp_path, capsys):
    from tf_netvlad.data.dbstruct import write_mat
    from tf_netvlad.data.places import PlaceSplit

    split = PlaceSplit(name="empty", db_paths=["a.jpg", "b.jpg"], db_utm=np.zeros((2, 2)),
                       query_paths=[], query_utm=np.zeros((0, 2)))
    write_mat(split, tmp_path / "empty.mat")
    assert main.main(["evaluate", "--dataset", str(tmp_path / "empty.mat"), "--backbone", "tiny"]) == 2
    assert "has no queries" in capsys.readouterr().err


def _write_tokyo247_mat(folder):
    """tokyo247.mat: 3 panoramas x 12 cutouts (32x32 PNGs, 100 m apart), 3 queries (640x800
    portrait / 800x600 landscape JPEGs: day, sunset, night) each at its own panorama."""
    from PIL import Image

    from tf_netvlad.data.dbstruct import write_mat
    from tf_netvlad.data.places import PlaceSplit

    rng = np.random.default_rng(0)
    (folder / "db").mkdir(parents=True)
    (folder / "q").mkdir()
    db_paths, query_paths = [], []
    for p in range(3):
        base = rng.integers(0, 256, (32, 32, 3))
        for j in range(12):
            pixels = np.clip(np.roll(base, 2 * j, axis=1) + rng.integers(-5, 6, base.shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / "db" / f"{p}_{j}.png")
            db_paths.append(f"db/{p}_{j}.png")
    for q in range(3):
        size = (800, 640) if q == 0 else (800, 600)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "q" / f"{q}.jpg")
        query_paths.append(f"q/{q}.jpg")
    db_utm = np.repeat(np.stack([np.arange(3) * 100.0, np.zeros(3)], axis=1), 12, axis=0)
    split = PlaceSplit("tokyo247", db_paths, db_utm, query_paths,
                       np.stack([np.arange(3) * 100.0 + 2, np.zeros(3)], axis=1))
    write_mat(split, folder / "tokyo247.mat")
    return folder / "tokyo247.mat"


def test_evaluate_tokyo247_with_approximate_index(tmp_path, capsys):
    mat = _write_tokyo247_mat(tmp_path / "tokyo")
    out_json = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", str(mat), "--backbone", "tiny", "--num-clusters", "4",
                     "--recall-ns", "1,2,3", "--approx-index", "IVF2,Flat", "--approx-nprobe", "2",
                     "--descriptor-dtype", "float16", "--memmap-dir", str(tmp_path / "mm"),
                     "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    assert results["protocol"] == "tokyo247" and results["query_image_size"] == "640"
    assert results["num_db"] == 36 and results["num_queries"] == 3
    assert results["recall@3"] == 1.0  # 3 panoramas after NMS: every query finds its own
    for condition in ("day", "sunset", "night"):
        assert results[f"num_queries/{condition}"] == 1
        assert results[f"recall@1/{condition}"] in (0.0, 1.0)
    # IVF2 visiting both cells with flat codes is exhaustive: the same recall as exact search.
    assert all(results[f"approx/recall@{n}"] == results[f"recall@{n}"] for n in (1, 2, 3))
    assert results["approx_index"] == "IVF2,Flat" and results["approx_train_size"] == 36
    header = next(line for line in printed.splitlines() if line.split()[:1] == ["N"])
    assert "day" in header and "night" in header and "approx" in header
    assert "protocol tokyo247" in printed and not os.listdir(tmp_path / "mm")

    # The default IVF-PQ cannot be trained on 36 images: one clear line, exit 2.
    assert main.main(["evaluate", "--dataset", str(mat), "--backbone", "tiny", "--num-clusters", "4",
                     "--approx-index", "--protocol", "pitts"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 624 database vectors" in err and "has 36" in err and "Traceback" not in err


@pytest.mark.parametrize("text, expected", [("default", DEFAULT_RECALL_NS),
                                           ("reference", REFERENCE_RECALL_NS), ("1,5,10", (1, 5, 10))])
def test_recall_ns_is_parsed_by_the_parser(text, expected):
    args = main.build_parser().parse_args(["evaluate", "--dataset", "d.mat", "--recall-ns", text])
    assert args.recall_ns == expected
    assert main.build_parser().parse_args(["evaluate", "--dataset", "d.mat"]).recall_ns == DEFAULT_RECALL_NS


def test_bad_recall_ns_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["evaluate", "--dataset", "missing.mat", "--backbone", "tiny", "--recall-ns", "1,x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --recall-ns: must be 'default', 'reference' or e.g. '1,5,10'" in err
    assert "missing.mat" not in err.splitlines()[-1]


def test_query_image_size_is_auto_or_a_policy():
    parse = main.build_parser().parse_args
    assert parse(["evaluate", "--dataset", "d.mat"]).query_image_size == "auto"
    assert parse(["evaluate", "--dataset", "d.mat", "--query-image-size", "640"]).query_image_size == 640
    args = parse(["evaluate-map", "--model", "m", "--gt", "g", "--images", "i", "--image-size", "keep"])
    assert args.image_size is None
