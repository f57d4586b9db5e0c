"""Training augmentation: each part checked on images whose correct output is known by hand."""

import numpy as np
import pytest
import tensorflow as tf

from tf_netvlad.training.augment import Augmentation, augment_image, augment_images, tuple_seed

SEEDS = [(0, 0), (1, 2), (7, 3), (123, 456), (9, 99)]


def _only(**strengths):
    return Augmentation(**{**vars(Augmentation.none()), **strengths})


def test_none_is_the_identity():
    image = np.random.default_rng(0).uniform(0, 255, (8, 10, 3)).astype(np.float32)
    out = augment_image(image, (1, 2), Augmentation.none())
    np.testing.assert_array_equal(np.asarray(out), image)


@pytest.mark.parametrize("seed", SEEDS)
def test_brightness_shifts_every_pixel_by_the_same_amount_within_its_range(seed):
    image = np.full((6, 5, 3), 100.0, np.float32)
    out = np.asarray(augment_image(image, seed, _only(brightness=0.15)))
    shift = out - 100.0
    assert np.ptp(shift) < 1e-4
    assert abs(shift[0, 0, 0]) <= 0.15 * 255 + 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_contrast_scales_distances_to_the_mean(seed):
    image = np.full((4, 4, 3), 50.0, np.float32)
    image[:, 2:] = 150.0  # mean 100 per channel
    out = np.asarray(augment_image(image, seed, _only(contrast=0.3)))
    low, high = out[0, 0, 0], out[0, 3, 0]
    assert (low + high) / 2 == pytest.approx(100.0, abs=1e-3)
    assert 0.7 - 1e-6 <= (high - low) / 100.0 <= 1.3 + 1e-6


@pytest.mark.parametrize("part", [dict(saturation=0.3), dict(hue=0.03)])
def test_colour_changes_leave_grey_pixels_grey(part):
    image = np.tile(np.linspace(0, 255, 12, dtype=np.float32)[:, None, None], (1, 3, 3))
    out = np.asarray(augment_image(image, (4, 5), _only(**part)))
    np.testing.assert_allclose(out, image, atol=0.01)


@pytest.mark.parametrize("seed", SEEDS)
def test_crop_is_a_zoom_and_shift_of_the_image(seed):
    # A horizontal ramp (value = column index): a crop of side s at offset l, resized back to
    # width W, is again a ramp, from l·(W-1) with slope s (bilinear resampling of a linear function).
    width = 33
    ramp = np.tile(np.arange(width, dtype=np.float32)[None, :, None], (9, 1, 3))
    out = np.asarray(augment_image(ramp, seed, _only(min_crop=0.8)))[4, :, 0]
    slope = np.diff(out)
    assert np.ptp(slope) < 1e-3  # still linear
    assert 0.8 - 1e-4 <= slope[0] <= 1.0 + 1e-4
    assert out[0] >= -1e-4 and out[-1] <= width - 1 + 1e-4


def test_saturation_blends_each_pixel_with_its_luma():
    # (150, 100, 80): luma Y = 0.299·150 + 0.587·100 + 0.114·80 = 112.67 (by hand). A factor f gives
    # Y + f (c - Y) per channel, in 0..255 for every f in [0.7, 1.3], so each channel gives back the
    # same f, and the luma is kept.
    pixel = np.array([150.0, 100.0, 80.0])
    luma = 112.67
    image = np.tile(pixel.astype(np.float32), (3, 4, 1))
    factors = []
    for seed in SEEDS:
        out = np.asarray(augment_image(image, seed, _only(saturation=0.3)))[1, 2]
        f = (out - luma) / (pixel - luma)
        assert np.ptp(f) < 1e-3 and 0.7 - 1e-4 <= f[0] <= 1.3 + 1e-4, f
        assert out @ [0.299, 0.587, 0.114] == pytest.approx(luma, abs=0.01)
        factors.append(f[0])
    assert np.ptp(factors) > 0.05  # the seeds draw different factors


def test_hue_turns_the_yiq_chroma_by_at_most_its_strength():
    # YIQ (NTSC): Y = 0.299 R + 0.587 G + 0.114 B, I = 0.596 R - 0.274 G - 0.322 B,
    # Q = 0.211 R - 0.523 G + 0.312 B (the hand-written matrix, not the module's). A hue change keeps
    # Y and the chroma length sqrt(I² + Q²) and turns the chroma by at most hue * 360 degrees.
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    image = np.tile(np.array([120.0, 100.0, 80.0], np.float32), (4, 4, 1))  # a brown, no clipping
    angles = []
    for seed in SEEDS:
        out = np.asarray(augment_image(image, seed, _only(hue=0.03)))[0, 0]
        before, after = yiq @ image[0, 0], yiq @ out
        assert after[0] == pytest.approx(before[0], abs=0.05)
        assert np.hypot(*after[1:]) == pytest.approx(np.hypot(*before[1:]), rel=2e-3)
        turn = np.degrees(np.arctan2(after[2], after[1]) - np.arctan2(before[2], before[1]))
        assert abs(turn) <= 0.03 * 360 + 0.1
        angles.append(turn)
    assert np.ptp(angles) > 1.0  # the seeds draw different turns


def test_draws_are_a_function_of_the_seed_and_each_image_of_a_stack_has_its_own():
    image = np.random.default_rng(1).uniform(0, 255, (16, 12, 3)).astype(np.float32)
    stack = np.stack([image, image])
    aug = Augmentation()
    first = np.asarray(augment_images(stack, tuple_seed(3, 1, 10), aug))
    again = np.asarray(augment_images(stack, tuple_seed(3, 1, 10), aug))
    other_cycle = np.asarray(augment_images(stack, tuple_seed(3, 2, 10), aug))
    other_row = np.asarray(augment_images(stack, tuple_seed(3, 1, 11), aug))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first[0] - first[1]).mean() > 1.0  # the same image in two slots: two draws
    assert np.abs(first - other_cycle).mean() > 1.0
    assert np.abs(first - other_row).mean() > 1.0
    assert first.shape == stack.shape and first.min() >= 0 and first.max() <= 255
    # a stack's image k is what augment_image gives for it alone only for k = 0 (row 0 of the draws)
    np.testing.assert_allclose(np.asarray(augment_image(image, tuple_seed(3, 1, 10), aug)), first[0],
                               atol=1e-3)


def test_works_inside_a_tf_data_map():
    images = tf.data.Dataset.from_tensor_slices(np.full((3, 8, 8, 3), 128.0, np.float32))
    ds = images.enumerate().map(
        lambda i, x: augment_image(x, tuple_seed(0, 0, i), _only(brightness=0.1)))
    values = [float(x[0, 0, 0]) for x in ds]
    assert len(set(values)) == 3


@pytest.mark.parametrize("bad", [dict(min_crop=0.0), dict(brightness=1.0), dict(hue=0.6),
                                 dict(contrast=-0.1)])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(ValueError):
        Augmentation(**bad)
