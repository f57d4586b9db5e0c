"""`tf_netvlad index` and `localize` (`tf_netvlad.cli.retrieval`)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tf_netvlad import defaults
from tf_netvlad.cli import main


def test_index_then_localize_database_images(tiny_demo, tmp_path, capsys):
    from tf_netvlad.data import split_loading

    model_path = tmp_path / "m.keras"
    test_mat = str(tiny_demo["test_mat"])
    assert main.main(["init", "--dataset", test_mat, "--backbone", "tiny", "--num-clusters", "4",
                     "--num-images", "10", "--per-image", "30", "--out", str(model_path)]) == 0
    index_dir = tmp_path / "index"
    assert main.main(["index", "--model", str(model_path), "--dataset", test_mat, "--out", str(index_dir)]) == 0
    split = split_loading.load_split(test_mat)
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
    # where no flag means the index's policy, an explicit keep must stay distinguishable from it
    for command in (["localize", "--index", "i", "--model", "m", "q.jpg"],
                    ["hloc", "--index", "i", "--pairs", "p.txt", "--num-matched", "2"]):
        assert parse(command + ["--image-size", "keep"]).image_size == "keep"
        assert parse(command + ["--image-size", "96x128"]).image_size == (96, 128)


def test_index_add_refuses_an_image_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["index", "--model", "m", "--images", "i", "--out", "o", "--add",
                   "--image-size", "keep"])
    assert exit_info.value.code == 2
    assert "--image-size: not allowed with argument --add" in capsys.readouterr().err


def test_index_needs_exactly_one_image_source(tmp_path, capsys):
    assert main.main(["index", "--model", "m.keras", "--out", str(tmp_path / "ix")]) == 2
    assert "exactly one of --dataset FILE or --images DIR" in capsys.readouterr().err


def test_index_with_utm_zone_localize_in_lat_lon_and_hloc_files(tmp_path, tiny_model, capsys):
    """@-named images in Pittsburgh (zone 17T from the names) -> index -> localize answers in
    latitude/longitude -> hloc features and pairs from the index (read back as hloc reads them)."""
    import h5py
    from PIL import Image

    from tests.helpers import write_block_images
    from tf_netvlad.data import utm

    model_path = tmp_path / "m.keras"
    tiny_model.save(model_path)
    folder = tmp_path / "db"
    lat = np.array([40.4406, 40.4415, 40.4424])
    east, north, _, _ = utm.latlon_to_utm(lat, np.full(3, -79.9959))
    (folder / "sub").mkdir(parents=True)
    for name, e, n, la in zip(write_block_images(tmp_path / "raw", 3, seed=7), east, north, lat):
        # VPR-datasets-downloader names: @utm_east@utm_north@zone@band@lat@lon@...
        Image.open(tmp_path / "raw" / name).save(folder / "sub" / f"@{e:.2f}@{n:.2f}@17@T@{la}@-79.9959@.png")
    index_dir = tmp_path / "index"
    assert main.main(["index", "--model", str(model_path), "--images", str(folder),
                      "--out", str(index_dir), "--image-size", "24x32"]) == 0
    assert "(3 images, 256-D, UTM zone 17T)" in capsys.readouterr().out
    query = sorted((folder / "sub").iterdir())[1]
    assert main.main(["localize", "--index", str(index_dir), "--model", str(model_path), str(query),
                      "--top-k", "1", "--json", str(tmp_path / "loc.json")]) == 0
    assert "UTM 17T = latitude 40.44" in capsys.readouterr().out
    result = json.loads((tmp_path / "loc.json").read_text())[0]
    row = int(np.argmin(np.abs(north - float(query.name.split("@")[2]))))  # the query's place
    assert abs(result["estimated_latlon"][0] - lat[row]) < 1e-6
    assert abs(result["estimated_latlon"][1] + 79.9959) < 1e-6
    features, pairs = tmp_path / "feats.h5", tmp_path / "pairs.txt"
    assert main.main(["hloc", "--index", str(index_dir), "--features", str(features),
                      "--pairs", str(pairs), "--num-matched", "5"]) == 0
    out = capsys.readouterr().out
    assert f"features: {features} (float16)" in out and f"pairs: {pairs} (6 pairs)" in out
    with h5py.File(features, "r") as handle:
        assert len(handle["sub"]) == 3 and handle[f"sub/{query.name}/global_descriptor"].shape == (256,)
    lines = pairs.read_text().split("\n")
    assert len(lines) == 6 and all(a != b and a.startswith("sub/@") for a, b in (x.split() for x in lines))
    # an existing output is refused before any work, with the flag to use
    assert main.main(["hloc", "--index", str(index_dir), "--pairs", str(pairs), "--num-matched", "1"]) == 2
    assert "--pairs" in capsys.readouterr().err and len(pairs.read_text().split("\n")) == 6


def test_hloc_and_utm_zone_flags_are_checked_before_any_work(tmp_path, capsys):
    parse = main.build_parser().parse_args
    args = parse(["hloc", "--index", "ix", "--pairs", "p.txt", "--num-matched", "20", "--keep-self",
                  "--min-score", "none", "--float32"])
    assert (args.num_matched, args.keep_self, args.min_score, args.float32) == (20, True, None, True)
    args = parse(["hloc", "--index", "ix", "--features", "f.h5"])
    assert (args.min_score, args.keep_self, args.float32, args.append) == (0.0, False, False, False)
    assert parse(["index", "--model", "m", "--images", "i", "--out", "o", "--utm-zone", "17t"]).utm_zone == "17T"
    with pytest.raises(SystemExit):
        parse(["index", "--model", "m", "--images", "i", "--out", "o", "--utm-zone", "17"])
    assert "not a UTM zone label" in capsys.readouterr().err
    for argv, message in (
        (["hloc", "--index", "ix"], "Nothing to write"),
        (["hloc", "--index", "ix", "--pairs", str(tmp_path / "p.txt")], "--pairs needs --num-matched"),
        (["hloc", "--features", str(tmp_path / "f.h5")], "exactly one of --index"),
        (["hloc", "--images", "i", "--features", str(tmp_path / "f.h5")], "need --model"),
        (["hloc", "--index", "ix", "--features", str(tmp_path / "f.txt")], "must end in .h5"),
    ):
        assert main.main(argv) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
