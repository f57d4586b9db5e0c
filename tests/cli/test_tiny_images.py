"""Valid images smaller than the model's receptive field, in every verb (issue 14 item 2).

A 1x1 or 4x4 px PNG used to abort `evaluate`, `index`, `localize` and `fit-whitening` with a
TensorFlow `AbortedError ... MaxPool` (an empty feature map), and `index` then left a folder that
failed again on every resume. Now such an image is stretched up to the model's minimum input size
(8x8 for the `tiny` backbone; `data.images.upscale_to_min_size`) in extraction and in both serving
signatures, so it gets the same descriptor everywhere.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_block_images
from tf_netvlad.cli import main
from tf_netvlad.models import extract

TINY = {"db_1x1.png": (1, 1), "db_4x4.png": (4, 4), "q_2x2.png": (2, 2), "q_1x5.png": (1, 5)}


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory, tiny_model):
    """A CSV split of 6 normal (32x40) and 2 tiny database images, 2 normal and 2 tiny queries,
    and the `tiny_model` saved as a .keras file."""
    from tf_netvlad.models.model_files import save_model

    root = tmp_path_factory.mktemp("tiny_images")
    normal = write_block_images(root, 8, seed=3)
    rng = np.random.default_rng(4)
    for name, size in TINY.items():
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / name)
    db = normal[:6] + ["db_1x1.png", "db_4x4.png"]
    queries = normal[6:] + ["q_2x2.png", "q_1x5.png"]
    rows = ["path,role,easting,northing"]
    rows += [f"{name},db,{500000 + 5 * i},{4000000}" for i, name in enumerate(db)]
    rows += [f"{name},query,{500000 + 5 * i + 1},{4000000}" for i, name in enumerate(queries)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    model_path = str(root / "tiny.keras")
    save_model(tiny_model, model_path)
    return {"root": root, "csv": str(root / "split.csv"), "model": model_path, "db": db, "queries": queries}


def test_evaluate_counts_tiny_queries_and_database_images(tiny_split, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", tiny_split["csv"], "--model", tiny_split["model"],
                      "--json", str(out), "--strict"]) == 0
    results = json.loads(out.read_text())
    assert results["num_queries"] == 4 and results["num_db"] == 8
    assert not results.get("unreadable") and "unreadable" not in capsys.readouterr().err


def test_index_and_localize_tiny_images(tiny_split, tmp_path, capsys):
    index_dir = tmp_path / "index"
    assert main.main(["index", "--model", tiny_split["model"], "--dataset", tiny_split["csv"],
                      "--out", str(index_dir), "--strict", "--chunk-size", "3"]) == 0
    metadata = json.loads((index_dir / "metadata.json").read_text())
    assert metadata["count"] == 8 and metadata["skipped"] == [] and not (index_dir / "progress.json").exists()
    root = tiny_split["root"]
    photos = [str(root / "q_2x2.png"), str(root / "db_1x1.png"), str(root / "db_4x4.png")]
    assert main.main(["localize", *photos, "--index", str(index_dir), "--model", tiny_split["model"],
                      "--json", str(tmp_path / "loc.json"), "--strict"]) == 0
    results = json.loads((tmp_path / "loc.json").read_text())
    assert [("error" in r, len(r["top"]) > 0) for r in results] == [(False, True)] * 3
    # a tiny database image retrieves itself: the index and the query path stretch it identically
    assert results[1]["top"][0]["path"].endswith("/db_1x1.png")
    assert results[2]["top"][0]["path"].endswith("/db_4x4.png")
    assert results[1]["top"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_fit_whitening_on_tiny_images(tiny_split, tmp_path):
    from tf_netvlad.models.model_files import load_model

    out = tmp_path / "white.keras"
    assert main.main(["fit-whitening", "--dataset", tiny_split["csv"], "--model", tiny_split["model"],
                      "--dim", "4", "--out", str(out)]) == 0
    whitened = load_model(out)
    assert whitened.whitening_dim == 4
    root = tiny_split["root"]
    desc = extract.extract_descriptors(whitened, [str(root / "db_1x1.png")], progress=False)
    assert desc.shape == (1, 4) and np.isfinite(desc).all()


def test_export_signatures_describe_tiny_images_as_extraction(tiny_split, tiny_model, tmp_path):
    import tensorflow as tf

    base = tmp_path / "served"
    assert main.main(["export", "--model", tiny_split["model"], "--saved-model", str(base),
                      "--image-size", "keep", "--no-warmup"]) == 0
    loaded = tf.saved_model.load(str(base / "1"))
    paths = [str(tiny_split["root"] / name) for name in TINY]
    encoded = tf.constant([open(p, "rb").read() for p in paths])
    served = loaded.signatures["serve_bytes"](image_bytes=encoded)["descriptor"].numpy()
    expected = extract.extract_descriptors(tiny_model, paths, progress=False)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    pixels = np.asarray(Image.open(paths[2]), np.float32)[None]  # the 2x2 query as float RGB
    floats = loaded.signatures["serving_default"](images=tf.constant(pixels))["descriptor"].numpy()
    np.testing.assert_allclose(floats, expected[2:3], atol=1e-5)


def test_export_refuses_a_fixed_size_below_the_minimum(tiny_split, tmp_path, capsys):
    base = tmp_path / "served"
    assert main.main(["export", "--model", tiny_split["model"], "--saved-model", str(base),
                      "--image-size", "4x4", "--no-warmup"]) == 2
    err = capsys.readouterr().err
    assert "`image_size` '4x4' is smaller than the minimum input" in err and "8x8 px" in err
    assert not base.exists() or not any(base.iterdir())
