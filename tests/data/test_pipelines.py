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


# PIL's own `convert("RGB")` of the "P" case (a palette PNG with transparency, written on purpose)
# warns that such images should become RGBA first: the reference path, not the code under test.
@pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")
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


# --------------------------------------------------------------------------- where decoding equals PIL
# `serve_bytes` decodes with `decode_image` too (tests/export: its output equals extraction's), so
# these bounds are the signature's. PNG chunks follow the PNG specification (IHDR, IDAT, IEND).


def _png16(values):
    """A 16-bit PNG (grey `(h, w)`, RGB or RGBA `(h, w, c)`), written chunk by chunk: PIL writes no
    16-bit colour PNGs."""
    import struct
    import zlib

    values = np.asarray(values, np.uint16)
    height, width = values.shape[:2]
    colour_type = {2: 0, 3: 2, 4: 6}[values.ndim if values.ndim == 2 else values.shape[2]]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _decode_diff(encoded):
    decoded = decode_image(tf.constant(encoded)).numpy().astype(int)
    pil = _pil_rgb(encoded).astype(int)
    assert decoded.shape == pil.shape
    return np.abs(decoded - pil).max()


@pytest.mark.parametrize("kwargs", [dict(progressive=True), dict(progressive=True, subsampling=2, quality=70),
                                    dict(optimize=True, quality=90)])
def test_progressive_and_optimised_jpegs_are_bit_exact_with_pil(rng, kwargs):
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert _decode_diff(_encode(Image.fromarray(pixels), "JPEG", **kwargs)) == 0
    assert _decode_diff(_encode(Image.fromarray(pixels[..., 0], "L"), "JPEG", **kwargs)) == 0


@pytest.mark.parametrize("fmt, mode", [("GIF", "P"), ("BMP", "RGB"), ("BMP", "L"), ("PNG", "1")])
def test_gif_bmp_and_1bit_png_are_bit_exact_with_pil(rng, fmt, mode):
    pixels = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    assert _decode_diff(_encode(Image.fromarray(pixels).convert(mode), fmt)) == 0


def test_16bit_colour_png_keeps_the_high_byte_as_pil(rng):
    for channels in (3, 4):
        values = rng.integers(0, 65536, (13, 17, channels), dtype=np.uint16)
        encoded = _png16(values)
        assert _decode_diff(encoded) == 0
        np.testing.assert_array_equal(decode_image(encoded).numpy(), (values[..., :3] >> 8).astype(np.uint8))


def test_cmyk_jpeg_is_within_one_grey_level_of_pil(rng):
    cmyk = Image.fromarray(rng.integers(0, 256, (29, 31, 4), dtype=np.uint8), "CMYK")
    diff = _decode_diff(_encode(cmyk, "JPEG", quality=95))
    assert diff <= 1


def test_16bit_grey_png_is_scaled_by_tensorflow_but_clipped_by_pil():
    """The documented exception: TF keeps the high byte (v >> 8), PIL clips v at 255."""
    values = np.array([[0, 255, 256, 4660], [32768, 65280, 65535, 200]], np.uint16)
    encoded = _png16(values)
    decoded = decode_image(encoded).numpy()
    np.testing.assert_array_equal(decoded[..., 0], [[0, 0, 1, 18], [128, 255, 255, 0]])
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])
    np.testing.assert_array_equal(_pil_rgb(encoded)[..., 0], [[0, 255, 255, 255], [255, 255, 255, 200]])
    assert _decode_diff(encoded) == 255  # 255 -> 0 here; a photo's darkest values differ most


# --------------------------------------------------------------------------- minimum input size


def test_upscale_to_min_size_stretches_short_sides_only(rng):
    from tf_netvlad.data.images import upscale_to_min_size

    one = rng.integers(0, 256, (1, 1, 3)).astype(np.float32)
    np.testing.assert_array_equal(upscale_to_min_size(one, (8, 6)).numpy(), np.broadcast_to(one, (8, 6, 3)))
    # 2 -> 4 rows with half-pixel centres: rows sample 0, 0.25, 0.75, 1 (clamped at the ends)
    two = np.array([[[0.0] * 3], [[100.0] * 3]], np.float32)  # (2, 1, 3)
    np.testing.assert_allclose(upscale_to_min_size(two, (4, 1)).numpy()[:, 0, 0], [0, 25, 75, 100])
    batch = rng.integers(0, 256, (2, 3, 12, 3)).astype(np.float32)
    assert upscale_to_min_size(batch, (8, 8)).shape == (2, 8, 12, 3)  # width already large enough
    big = rng.integers(0, 256, (9, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(upscale_to_min_size(big, (8, 8)).numpy(), big)  # unchanged, float32
    assert upscale_to_min_size(big, None).dtype == tf.float32
    fn = tf.function(lambda x: upscale_to_min_size(x, (8, 8)), autograph=False,
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    assert fn(batch).shape == (2, 8, 12, 3) and fn(big[None].astype(np.float32)).shape == (1, 9, 8, 3)
