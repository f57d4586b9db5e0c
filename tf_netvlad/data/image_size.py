"""The resize policy of every image path (extraction, evaluation, training, serving) as a value.

`image_size` is `None` ("keep": full resolution), an int S (the longer side is scaled down to S,
never up) or `(H, W)` (exact size); see `tf_netvlad.data.pipelines` for what each does to the pixels. This
module only parses and formats it, with no TensorFlow import.
"""

import numpy as np

_KEEP_WORDS = ("keep", "none", "full", "native", "")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_image_size(value):
    """Normalises an image-size specification to `None`, a positive `int`, or an `(H, W)` tuple.

    Accepts `None`, an int, a 2-sequence of ints, or a CLI string: `"keep"` (also `"none"`,
    `"full"`) -> `None`; `"640"` -> `640` (max side); `"480x640"` or `"480,640"` -> `(480, 640)`.
    """
    original = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _KEEP_WORDS:
            return None
        parts = text.replace(",", "x").replace("*", "x").split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = None
        if numbers is None or len(numbers) not in (1, 2):
            raise ValueError(
                "`image_size` must be 'keep', a max side like '640', or 'HxW' like '480x640'. "
                f"Received: image_size={original!r}"
            )
        value = numbers[0] if len(numbers) == 1 else tuple(numbers)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`image_size` must be None, an int or (H, W). Received: image_size={original!r}"
        )
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise ValueError(
                f"`image_size` (max side) must be >= 1. Received: image_size={original!r}"
            )
        return int(value)
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2:
        if all(_is_int(v) and v >= 1 for v in value):
            return (int(value[0]), int(value[1]))
    raise ValueError(
        "`image_size` must be None ('keep'), a positive int (max side) or a pair of positive ints "
        f"(H, W). Received: image_size={original!r}"
    )


def format_image_size(image_size):
    """Inverse of `parse_image_size` for logs/JSON: None -> 'keep', 640 -> '640', (H, W) -> 'HxW'."""
    image_size = parse_image_size(image_size)
    if image_size is None:
        return "keep"
    if isinstance(image_size, int):
        return str(image_size)
    return f"{image_size[0]}x{image_size[1]}"


def is_fixed_size(image_size):
    """True when the policy gives every image the same shape, i.e. `(H, W)`."""
    return isinstance(parse_image_size(image_size), tuple)
