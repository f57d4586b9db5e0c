"""`tf_netvlad index` and `localize` (`tf_netvlad.cli.retrieval`)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tf_netvlad import defaults
from tf_netvlad.cli import main


def test_index_then_localize_database_images(tiny_demo, tmp_path, capsys):
    from tf_netvlad.data import places

    model_path = tmp_path / "m.keras"
    test_mat = str(tiny_demo["test_mat"])
    assert main.main(["init", "--dataset", test_mat, "--backbone", "tiny", "--num-clusters", "4",
                     "--num-images", "10", "--per-image", "30", "--out", str(model_path)]) == 0
    index_dir = tmp_path / "index"
    assert main.main(["index", "--model", str(model_path), "--dataset", test_mat, "--out", str(index_dir)]) == 0
    split = places.load_split(test_mat)
    assert f"({split.num_db} images" in capsys.readouterr().out
    queries = [str(tmp_path / "q0.jpg"), str(tmp_path / "q1.jpg")]
    for i, q in enumerate(queries):  # database images as queries: their own top-1
        Path(q).write_bytes((Path(split.root) / split.db_paths[i]).read_bytes())
    out_json, out_png = tmp_path / "loc.json", tmp_path / "loc.png"
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), *queries,
                     "--top-k", "3", "--json", str(out_json), "--plot", str(out_png)]) == 0
    results = json.loads(out_json.read_text())
    for i, result in enumerate(results):
        assert result["top"][0]["path"].endswith(split.db_paths[i])
        np.testing.assert_allclose(result["estimated_position"], split.db_utm[i], atol=25)
    assert out_png.stat().st_size > 1000
    # An unreadable query is reported and skipped; the others are still localised; exit 1.
    missing = str(tmp_path / "missing.jpg")
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), queries[0],
                     missing, "--json", str(out_json)]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: not localised, file does not exist" in captured.out
    assert "1 of 2 query images could not be read" in captured.err
    results = json.loads(out_json.read_text())
    assert results[0]["top"][0]["path"].endswith(split.db_paths[0]) and results[1]["top"] == []
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), missing,
                     "--strict"]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    # --gt-dataset: a split image is marked; one that is not in the split is localised unmarked
    in_split = str(Path(split.root) / split.db_paths[0])
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), in_split,
                     queries[1], "--gt-dataset", test_mat, "--json", str(out_json)]) == 0
    assert f"{queries[1]} is not in --gt-dataset" in capsys.readouterr().err
    results = json.loads(out_json.read_text())
    assert results[0]["top1_correct"] is True and results[0]["gt_position"] == list(split.db_utm[0])
    assert results[1]["top1_correct"] is None and results[1]["top"][0]["path"].endswith(split.db_paths[1])
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), queries[1],
                     "--gt-dataset", test_mat, "--strict"]) == 2
    assert "q1.jpg' is not among" in capsys.readouterr().err


def test_index_and_localize_flags_are_parsed():
    parse = main.build_parser().parse_args
    built = parse(["index", "--model", "m", "--dataset", "d.mat", "--out", "o"])
    assert built.image_size is None and built.on_error == "skip"
    assert (built.chunk_size, built.batch_size) == (defaults.INDEX_CHUNK_SIZE, defaults.EXTRACT_BATCH_SIZE)
    assert parse(["index", "--model", "m", "--images", "i", "--out", "o", "--image-size", "320",
                  "--strict"]).image_size == 320
    found = parse(["localize", "--index", "i", "--model", "m", "q.jpg", "--strict"])
    assert found.top_k == defaults.LOCALIZE_TOP_K and found.image_size is None
    assert found.on_error == "raise" and found.images == ["q.jpg"]


def test_index_add_refuses_an_image_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["index", "--model", "m", "--images", "i", "--out", "o", "--add",
                   "--image-size", "keep"])
    assert exit_info.value.code == 2
    assert "--image-size: not allowed with argument --add" in capsys.readouterr().err


def test_index_needs_exactly_one_image_source(tmp_path, capsys):
    assert main.main(["index", "--model", "m.keras", "--out", str(tmp_path / "ix")]) == 2
    assert "exactly one of --dataset FILE or --images DIR" in capsys.readouterr().err
