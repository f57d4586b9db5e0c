"""The resize policy of every image path (extraction, evaluation, training, serving) as a value.

`image_size` is `None` ("keep": full resolution), an int S (the longer side is scaled down to S,
never up) or `(H, W)` (exact size); see `tf_netvlad.data.pipelines` for what each does to the
pixels. This module turns what a user writes into that value (`parse_image_size`) and back into
the text the files store (`format_image_size`), with no TensorFlow import.

Parsed once, at the public boundary: every public function that takes an `image_size` (the CLI,
`extract_descriptors`, `evaluate`, `initialize_netvlad`, `TrainConfig`, `build_retrieval_index`,
`localize`, `export_saved_model`, ...) calls `parse_image_size` first and hands the parsed value
down; the functions below it (pipelines, resizing, predict functions, serving signatures) take
only the parsed value and verify it with `check_image_size`, which parses nothing.
"""

import numpy as np

_KEEP_WORDS = ("keep", "none", "full", "native", "")

# The parsed policy is a plain value, not a class: `None`, a positive `int`, or a `(H, W)` tuple of
# two positive `int`s (exact Python types: no bool, no NumPy scalar, no list, no string). A class
# would be a second representation to convert at every place that already holds this one:
# `TrainConfig.image_size` and its saved config (a tuple / JSON list), `RetrievalIndex.image_size`,
# the `image_size` the graph code indexes (`size[0]`) and the predict-function cache key (it is
# hashable). `parse_image_size` returns it unchanged, so a parsed value may cross any public
# function again at no cost.
ImageSize = int | tuple[int, int] | None


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_image_size(value):
    """Normalises an image-size specification to `None`, a positive `int`, or an `(H, W)` tuple.

    Accepts `None`, an int, a 2-sequence of ints, or a CLI string: `"keep"` (also `"none"`,
    `"full"`) -> `None`; `"640"` -> `640` (max side); `"480x640"` or `"480,640"` -> `(480, 640)`.
    An already parsed value is returned unchanged.
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


def is_parsed(image_size):
    """True when `image_size` is in the parsed form (`ImageSize`): None, int >= 1 or (H, W)."""
    if image_size is None:
        return True
    if type(image_size) is int:
        return image_size >= 1
    return (type(image_size) is tuple and len(image_size) == 2
            and all(type(v) is int and v >= 1 for v in image_size))


def check_image_size(image_size):
    """Returns a parsed `image_size` unchanged; raises `TypeError` for anything else.

    The guard of the functions below the public boundary: a few type checks, no parsing. A
    failure is a programming error (a caller skipped `parse_image_size`), not a user error.
    """
    if not is_parsed(image_size):
        raise TypeError(
            "`image_size` must be parsed with `tf_netvlad.data.image_size.parse_image_size` "
            f"before it is passed down. Received: image_size={image_size!r}"
        )
    return image_size


def format_image_size(image_size):
    """The text of a parsed policy, as logs and JSON store it: None -> 'keep', 640 -> '640',
    (H, W) -> 'HxW'. `parse_image_size` reads it back."""
    image_size = check_image_size(image_size)
    if image_size is None:
        return "keep"
    if isinstance(image_size, int):
        return str(image_size)
    return f"{image_size[0]}x{image_size[1]}"


def is_fixed_size(image_size):
    """True when the parsed policy gives every image the same shape, i.e. `(H, W)`."""
    return isinstance(check_image_size(image_size), tuple)
