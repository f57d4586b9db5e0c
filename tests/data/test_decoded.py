"""`data.decoded.DecodedImages`: pixels equal to the file pipeline's, rows by path, failed files."""

import numpy as np
import pytest
from PIL import Image

from tests.helpers import mean_values
from tf_netvlad.data.decoded import DecodedImages, cache_nbytes
from tf_netvlad.data.images import load_image
from tf_netvlad.data.pipelines import ImageReadError
from tf_netvlad.models.extract import extract_descriptors


def test_cache_size_is_height_times_width_times_three_float32_per_image():
    assert cache_nbytes(10, (96, 128)) == 1_474_560  # 10 · 96 · 128 · 3 · 4
    assert cache_nbytes(17_416, (480, 640)) == 64_202_342_400  # Pitts30k train at the paper size
    assert cache_nbytes(10, (96, 128), "uint8") == 368_640  # 10 · 96 · 128 · 3


def _noise_files(root, shapes):
    """PNG files of random pixels, one per `(H, W)` of `shapes`: their names and pixels."""
    rng = np.random.default_rng(1)
    names, pixels = [], []
    for k, shape in enumerate(shapes):
        pixels.append(rng.integers(0, 256, shape + (3,), dtype=np.uint8))
        names.append(f"noise{k}.png")
        Image.fromarray(pixels[-1]).save(root / names[-1])
    return names, pixels


def test_files_at_the_size_are_held_as_uint8_exactly_and_read_as_float32(tmp_path):
    names, pixels = _noise_files(tmp_path, [(6, 8)] * 5)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    images = DecodedImages.load(names + ["broken.png"], tmp_path, (6, 8), batch_size=2, dtype="uint8")
    assert images.pixels.dtype == "uint8" and images.nbytes == 6 * 6 * 8 * 3
    np.testing.assert_array_equal(images.ok, [True] * 5 + [False])
    got = images.gather(np.array([4, 0])).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([pixels[4], pixels[0]]))
    batches = list(images.batches(names[::-1], tmp_path, batch_size=3))
    assert [b.dtype for _, b in batches] == [np.float32] * 2
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), np.stack(pixels[::-1]))


def test_a_resized_file_cannot_be_held_as_uint8_and_is_named(tmp_path):
    from tf_netvlad.data.decoded import NotWholePixels

    names, _ = _noise_files(tmp_path, [(6, 8), (6, 8), (12, 20), (6, 8)])
    with pytest.raises(NotWholePixels, match=r"'.*noise2.png' is not 6x8"):
        DecodedImages.load(names, tmp_path, (6, 8), batch_size=2, dtype="uint8")
    with pytest.raises(ValueError, match="float32 or uint8"):
        DecodedImages.load(names, tmp_path, (6, 8), dtype="float16")


def test_the_cache_takes_uint8_when_only_that_fits_and_the_files_otherwise(tmp_path, caplog):
    """4 images of 128x256: 1.5 MiB as float32, 0.375 MiB as uint8; the budget is whole MiB."""
    import logging
    from types import SimpleNamespace

    from tf_netvlad.data.decoded import decode_splits

    names, pixels = _noise_files(tmp_path, [(128, 256)] * 4)

    def split(paths):  # what decode_splits reads of a split
        return SimpleNamespace(db_paths=paths[:2], query_paths=paths[2:], root=str(tmp_path))

    caplog.set_level(logging.INFO, logger="tf_netvlad.data.decoded")
    assert decode_splits([(split(names), None)], (128, 256), 2).pixels.dtype == "float32"
    compact = decode_splits([(split(names), None)], (128, 256), 1)
    assert compact.pixels.dtype == "uint8"
    np.testing.assert_array_equal(compact.gather(compact.rows(names[2:3], tmp_path)).numpy()[0], pixels[2])
    assert "as uint8 (0.4 MiB; float32 would need 1.5 MiB, more than image_cache_mb=1)" in caplog.text
    # a file at another size: read from the files, saying which and what to do
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "square.png")
    caplog.clear()
    assert decode_splits([(split(names + ["square.png"]), None)], (128, 256), 1) is None
    assert "square.png' is not 128x256" in caplog.text and "--image-cache-mb to 2" in caplog.text
    caplog.clear()
    assert decode_splits([(split(names * 3), None)], (128, 256), 0) is None  # 0: never
    assert caplog.text == ""


def test_pixels_are_exactly_the_file_pipelines_resized_ones(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    Image.fromarray(noise[:6, :8]).save(tmp_path / "native.png")
    images = DecodedImages.load(["noise.png", "native.png"], tmp_path, (6, 8))
    pixels = images.pixels.numpy()
    assert pixels.dtype == np.float32 and pixels.shape == (2, 6, 8, 3) and images.ok.all()
    resized = load_image(str(tmp_path / "noise.png"), (6, 8)).numpy()  # bilinear: not integers
    assert np.abs(resized - np.rint(resized)).max() > 0.1
    np.testing.assert_array_equal(pixels[0], resized)  # not rounded
    np.testing.assert_array_equal(pixels[1], noise[:6, :8])  # a file of the target size: exact


def test_rows_follow_paths_duplicates_are_held_once_and_unknown_paths_are_named(colour_images):
    root, names = colour_images
    images = DecodedImages.load(names[:4] + names[:2], root, (6, 8))
    assert len(images) == 4 and images.nbytes == 4 * 6 * 8 * 3 * 4
    np.testing.assert_array_equal(images.rows([names[3], names[0], names[3]], root), [3, 0, 3])
    with pytest.raises(ValueError, match="img5.png' is not among the 4 decoded images"):
        images.rows([names[5]], root)
    with pytest.raises(ValueError, match="fixed image size"):
        DecodedImages.load(names, root, 64)


def test_batches_are_in_order_and_a_failed_file_is_named_or_skipped(colour_images):
    root, names = colour_images
    (root / names[2]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    images = DecodedImages.load(names, root, (6, 8))
    np.testing.assert_array_equal(images.ok, [True, True, False] + [True] * 5)
    batches = images.batches(names[::-1], root, batch_size=3, on_error="skip")
    got = list(batches)
    assert [len(i) for i, _ in got] == [3, 3, 1] and batches.skipped == [5]  # names[2] is 6th of 8
    np.testing.assert_array_equal(np.concatenate([i for i, _ in got]), [0, 1, 2, 3, 4, 6, 7])
    np.testing.assert_array_equal(np.concatenate([mean_values(b) for _, b in got]),
                                  [70, 60, 50, 40, 30, 10, 0])
    assert got[0][1].dtype == np.float32
    with pytest.raises(ImageReadError, match=r"img2.png' \(index 1\): cannot be decoded"):
        next(iter(images.batches(names[1:], root)))  # before any batch


def test_extraction_from_memory_equals_extraction_from_the_files(colour_images, mean_colour_model):
    root, names = colour_images
    images = DecodedImages.load(names, root, (6, 8))
    from_files = extract_descriptors(mean_colour_model, names, root, (6, 8), batch_size=3, progress=False)
    from_memory = extract_descriptors(mean_colour_model, names, root, (6, 8), batch_size=3, progress=False,
                                      images=images)
    np.testing.assert_array_equal(from_memory, from_files)
    with pytest.raises(ValueError, match=r"decoded images are \(6, 8\); extraction asked for"):
        extract_descriptors(mean_colour_model, names, root, (12, 16), progress=False, images=images)
