"""Tests for tf_netvlad.data.pipelines: decoding vs PIL, resize policy, ordered batches, named errors."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import write_solid_image
from tf_netvlad.data import pipelines
from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.data.images import decode_and_resize, decode_image, resize_image


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _pil_rgb(encoded):
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("quality", [75, 95])
def test_jpeg_decode_is_bit_exact_with_pil(rng, subsampling, quality):
    # Odd sizes exercise the partial MCU blocks; the default DCT method would differ by up to ~10.
    pixels = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    encoded = _encode(Image.fromarray(pixels), "JPEG", quality=quality, subsampling=subsampling)
    decoded = decode_image(tf.constant(encoded)).numpy()
    assert decoded.dtype == np.uint8 and decoded.shape == (45, 61, 3)
    np.testing.assert_array_equal(decoded, _pil_rgb(encoded))


def test_grey_jpeg_is_replicated_to_rgb(rng):
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    encoded = _encode(Image.fromarray(grey, "L"), "JPEG")
    decoded = decode_image(encoded).numpy()
    assert decoded.shape == (20, 30, 3)
    np.testing.assert_array_equal(decoded, _pil_rgb(encoded))
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_png_modes_match_pil_convert_rgb(rng, mode):
    rgba = rng.integers(0, 256, (17, 23, 4), dtype=np.uint8)
    encoded = _encode(Image.fromarray(rgba, "RGBA").convert(mode), "PNG")
    decoded = decode_image(encoded).numpy()
    assert decoded.shape == (17, 23, 3)
    np.testing.assert_array_equal(decoded, _pil_rgb(encoded))
    if mode == "RGBA":  # alpha dropped, colour kept unchanged (no premultiplication)
        np.testing.assert_array_equal(decoded, rgba[..., :3])


def test_decode_and_resize_traces_without_autograph(rng):
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    fn = tf.function(
        lambda s: decode_and_resize(s, (12, 16)),
        autograph=False,
        input_signature=[tf.TensorSpec([], tf.string)],
    )
    for encoded in (_encode(Image.fromarray(pixels), "PNG"), _encode(Image.fromarray(pixels), "JPEG")):
        out = fn(tf.constant(encoded))
        assert out.dtype == tf.float32 and tuple(out.shape) == (12, 16, 3)
    png = fn(tf.constant(_encode(Image.fromarray(pixels), "PNG"))).numpy()
    np.testing.assert_array_equal(png, resize_image(pixels, (12, 16)).numpy())


# --------------------------------------------------------------------------- resize policy


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None), ("keep", None), ("KEEP", None), ("none", None), ("640", 640), (640, 640),
        ("480x640", (480, 640)), ("480,640", (480, 640)), ((480, 640), (480, 640)), ([3, 4], (3, 4)),
    ],
)
def test_parse_image_size(value, expected):
    assert parse_image_size(value) == expected


@pytest.mark.parametrize("value", ["0", "x", "480x", "1x2x3", -5, 0, (0, 3), (2.5, 3), True, "abc"])
def test_parse_image_size_rejects_and_echoes(value):
    with pytest.raises(ValueError, match="image_size"):
        parse_image_size(value)


def test_format_image_size_round_trips():
    for value in (None, 640, (480, 640)):
        assert parse_image_size(format_image_size(value)) == value


@pytest.mark.parametrize(
    "shape, image_size, expected",
    [
        ((10, 12), None, (10, 12)),
        ((10, 12), 8, (7, 8)),  # 10 * 8 / 12 = 6.67 -> 7
        ((12, 10), 8, (8, 7)),
        ((9, 8), 8, (8, 7)),  # 8 * 8 / 9 = 7.11 -> 7
        ((10, 12), 12, (10, 12)),
        ((10, 12), 50, (10, 12)),  # never upscaled
        ((10, 12), (5, 6), (5, 6)),
        ((10, 12), (20, 7), (20, 7)),
    ],
)
def test_resize_policy_shapes(shape, image_size, expected):
    image = tf.zeros(shape + (3,), tf.uint8)
    out = resize_image(image, image_size)
    assert out.dtype == tf.float32
    assert tuple(out.shape) == expected + (3,)


def test_resize_keeps_pixels_when_size_unchanged_and_halves_by_block_mean(rng):
    pixels = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(pixels, 10).numpy(), pixels.astype(np.float32))
    np.testing.assert_array_equal(resize_image(pixels, None).numpy(), pixels.astype(np.float32))
    # Bilinear with half-pixel centres at exactly 2x puts each output sample between 2x2 inputs.
    halved = resize_image(pixels, (4, 5)).numpy()
    block_mean = pixels.astype(np.float64).reshape(4, 2, 5, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(halved, block_mean, atol=1e-4)
    assert resize_image(pixels, 5).shape == (4, 5, 3)


# --------------------------------------------------------------------------- datasets


def test_load_image_reads_float32(tmp_path):
    path = write_solid_image(tmp_path / "a.png", 77)
    image = pipelines.load_image(path, None).numpy()
    assert image.dtype == np.float32 and image.shape == (10, 12, 3)
    assert np.all(image == 77.0)


def test_image_dataset_preserves_order_with_fixed_size(tmp_path):
    values = [5, 200, 17, 90, 33]
    paths = [write_solid_image(tmp_path / f"{i}.png", v) for i, v in enumerate(values)]
    batches = list(pipelines.image_dataset(paths, image_size=(4, 6), batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 4, 6, 3), (2, 4, 6, 3), (1, 4, 6, 3)]
    seen = np.concatenate([b.numpy()[:, 0, 0, 0] for b in batches])
    np.testing.assert_array_equal(seen, values)


def test_image_dataset_relative_paths_and_indices(tmp_path):
    values = [10, 20, 30]
    for i, v in enumerate(values):
        write_solid_image(tmp_path / f"{i}.png", v)
    ds = pipelines.image_dataset([f"{i}.png" for i in range(3)], root=tmp_path, batch_size=8,
                            with_indices=True)
    indices, images = zip(*[(i.numpy(), x.numpy()) for i, x in ds])
    # "keep" policy: one image per dataset batch, in order.
    assert [list(i) for i in indices] == [[0], [1], [2]]
    assert [x[0, 0, 0, 0] for x in images] == values


def test_image_batches_group_consecutive_equal_shapes_in_order(tmp_path):
    sizes = [(10, 12), (10, 12), (8, 9), (10, 12), (10, 12), (10, 12)]
    paths = [write_solid_image(tmp_path / f"{i}.png", 10 * i, s) for i, s in enumerate(sizes)]
    batches = list(pipelines.ImageBatches(paths, image_size=None, batch_size=2))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2], [3, 4], [5]]
    assert [b[1].shape for b in batches] == [(2, 10, 12, 3), (1, 8, 9, 3), (2, 10, 12, 3), (1, 10, 12, 3)]
    for indices, images in batches:
        np.testing.assert_array_equal(images[:, 0, 0, 0], 10 * indices)
    # max side 8: all images become 7x8 or 7x8 (8x9 -> 7x8), so they batch together.
    grouped = list(pipelines.ImageBatches(paths, image_size=8, batch_size=4))
    assert [b[0].tolist() for b in grouped] == [[0, 1, 2, 3], [4, 5]]


def test_empty_path_list(tmp_path):
    assert list(pipelines.ImageBatches([], image_size=(4, 4))) == []
    assert list(pipelines.image_dataset([], image_size=(4, 4))) == []


def test_single_path_string_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="sequence of image paths"):
        pipelines.ImageBatches(str(tmp_path / "a.png"))


# --------------------------------------------------------------------------- errors


def _paths_with_bad(tmp_path, bad_position):
    paths = [write_solid_image(tmp_path / f"{i}.png", 10 * i) for i in range(4)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    paths.insert(bad_position, str(bad))
    return paths, str(bad)


def test_missing_file_is_named_before_decoding(tmp_path):
    paths = [write_solid_image(tmp_path / "a.png", 1), str(tmp_path / "nope.png")]
    with pytest.raises(pipelines.ImageReadError, match="nope.png") as info:
        list(pipelines.ImageBatches(paths))
    assert info.value.index == 1
    with pytest.raises(pipelines.ImageReadError, match="nope.png"):
        pipelines.image_dataset(paths)


@pytest.mark.parametrize("bad_position", [0, 2, 4])
def test_corrupt_file_error_names_the_file(tmp_path, bad_position):
    paths, bad = _paths_with_bad(tmp_path, bad_position)
    with pytest.raises(pipelines.ImageReadError, match="broken.jpg.*cannot be decoded") as info:
        list(pipelines.ImageBatches(paths, image_size=(4, 4), batch_size=2))
    assert info.value.path == bad and info.value.index == bad_position
    # The raw tf.data pipeline names it too (in-graph check), including a corrupt last file.
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.jpg"):
        list(pipelines.image_dataset(paths, image_size=(4, 4), batch_size=2))


def test_empty_file_reason(tmp_path):
    paths = [write_solid_image(tmp_path / "a.png", 1)]
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(pipelines.ImageReadError, match="empty.png.*empty"):
        list(pipelines.ImageBatches(paths + [str(tmp_path / "empty.png")]))


def test_skip_mode_reports_indices_and_keeps_order(tmp_path, caplog):
    paths, bad = _paths_with_bad(tmp_path, 2)
    paths.append(str(tmp_path / "missing.png"))  # index 5, also the last one
    batches = pipelines.ImageBatches(paths, image_size=(4, 4), batch_size=3, on_error="skip")
    with caplog.at_level("WARNING"):
        got = list(batches)
    indices = np.concatenate([i for i, _ in got])
    np.testing.assert_array_equal(indices, [0, 1, 3, 4])
    np.testing.assert_array_equal(np.concatenate([x[:, 0, 0, 0] for _, x in got]), [0, 10, 20, 30])
    assert batches.skipped == [2, 5]
    assert "broken.jpg" in caplog.text and "missing.png" in caplog.text
    ds = pipelines.image_dataset(paths, image_size=(4, 4), on_error="skip", with_indices=True)
    np.testing.assert_array_equal(np.concatenate([i.numpy() for i, _ in ds]), [0, 1, 3, 4])


def test_bad_arguments_are_echoed(tmp_path):
    with pytest.raises(ValueError, match="on_error='ignore'"):
        pipelines.ImageBatches([], on_error="ignore")
    with pytest.raises(ValueError, match="batch_size=0"):
        pipelines.image_dataset([], batch_size=0)
