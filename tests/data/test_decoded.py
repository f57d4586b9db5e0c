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
