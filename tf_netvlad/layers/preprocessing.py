"""Input normalisation that lives inside the model, so training, evaluation and serving agree."""

import keras
from keras import ops

# Named presets: (scale, mean, std, channel_order), applied as ((x * scale)[order] - mean) / std
# to RGB images in 0..255.
PRESETS = {
    # keras.applications "caffe" mode (VGG16, ResNet50): RGB -> BGR, minus the ImageNet BGR mean.
    "caffe": (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "bgr"),
    # torchvision / "torch" mode: 0..1, ImageNet mean and std.
    "torch": (1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb"),
    # keras.applications "tf" mode (MobileNetV2): -1..1.
    "tf": (1.0 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "rgb"),
    # Identity (0..255 RGB), e.g. for backbones that normalise internally.
    "raw": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb"),
}


@keras.saving.register_keras_serializable(package="tf_netvlad")
class ImagePreprocessing(keras.layers.Layer):
    """Normalises RGB images in 0..255: `((x * scale)[channel_order] − mean) / std`.

    The numbers are part of the layer config, so a saved model records exactly how its
    input is prepared. Use `ImagePreprocessing.from_preset("caffe")` for keras.applications
    weights, or `ImagePreprocessing(mean=average_rgb)` for MatConvNet weights (RGB 0..255 minus
    the mean image's first pixel, no std).

    Args:
        mode: str, a label recorded in the config (a preset name or "custom"/"matconvnet").
        scale: float multiplying the 0..255 input first.
        mean: 3 floats subtracted per channel (in the output channel order).
        std: 3 floats dividing per channel.
        channel_order: `"rgb"` or `"bgr"` (the input is always RGB).
    """

    def __init__(self, mode="custom", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                 channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"`mean` and `std` need 3 values. Received: mean={mean}, std={std}")
        if min(std) <= 0:
            raise ValueError(f"`std` must be positive. Received: std={std}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"`channel_order` must be 'rgb' or 'bgr'. Received: {channel_order!r}")
        self.mode = str(mode)
        self.scale = float(scale)
        self.mean = mean
        self.std = std
        self.channel_order = channel_order

    @classmethod
    def from_preset(cls, preset, **kwargs):
        if preset not in PRESETS:
            raise ValueError(f"Unknown preprocessing preset {preset!r}. Valid: {sorted(PRESETS)}")
        scale, mean, std, order = PRESETS[preset]
        return cls(mode=preset, scale=scale, mean=mean, std=std, channel_order=order, **kwargs)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype) * self.scale
        if self.channel_order == "bgr":
            x = ops.flip(x, axis=-1)
        # The same value in every channel is subtracted (divided) as a scalar, the same arithmetic
        # per element: a per-channel operand is a broadcast TensorFlow runs several times slower
        # on CPU (1.2 of the 1.3 ms this layer took in a CPU-recipe training step, "tf" preset).
        x = x - self._operand(self.mean)
        if self.std != (1.0, 1.0, 1.0):
            x = x / self._operand(self.std)
        return x

    def _operand(self, values):
        if len(set(values)) == 1:
            return ops.convert_to_tensor(values[0], dtype=self.compute_dtype)
        return ops.convert_to_tensor(values, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "scale": self.scale,
                "mean": list(self.mean),
                "std": list(self.std),
                "channel_order": self.channel_order,
            }
        )
        return config
