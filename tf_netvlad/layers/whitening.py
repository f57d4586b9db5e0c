"""PCA-whitening: fitted in NumPy with the reference's semantics, applied as a Keras layer."""

import keras
import numpy as np
from keras import ops

from tf_netvlad.layers.netvlad import L2_EPSILON, l2_normalize_norm


def fit_pca_whitening(descriptors, num_components, epsilon=1e-9):
    """Fits PCA-whitening as MATLAB `relja_PCA` + `addPCA.m` do.

    Mean-centred data, covariance / (n − 1); the eigenproblem is solved in its dual (Gram) form
    when there are fewer samples than dimensions. Directions are scaled by 1 / sqrt(λ + ε).

    Args:
        descriptors: array `(n, D)`; converted to float32, never copied to float64 whole.
        num_components: int, the output dimension P (at most `min(D, n − 1)`).
        epsilon: float added to every eigenvalue (1e-9 in the reference).

    Returns:
        `(kernel, bias)`: kernel `(D, P)` and bias `(P,)` (float32) so that
        `y = x @ kernel + bias = Wᵀ(x − μ)`; follow it by an L2 normalisation.
    """
    x = np.asarray(descriptors, dtype="float32")
    if x.ndim != 2:
        raise ValueError(f"`descriptors` must be 2-D (n, D). Received shape {x.shape}")
    n, dim = x.shape
    max_components = min(dim, n - 1)
    if not 1 <= num_components <= max_components:
        raise ValueError(
            f"`num_components` must be in [1, min(D, n - 1)] = [1, {max_components}] for "
            f"{n} descriptors of dimension {dim}. Received: num_components={num_components}"
        )
    mean = x.mean(axis=0, dtype="float64").astype("float32")
    xc = x - mean
    if n <= dim:  # dual form: eigenvectors of the n×n Gram matrix
        gram = (xc @ xc.T).astype("float64") / (n - 1)
        eigvals, eigvecs = np.linalg.eigh(gram)
        order = np.argsort(eigvals)[::-1][:num_components]
        eigvals = np.clip(eigvals[order], 0.0, None)
        # u = Xcᵀ v / sqrt(λ (n − 1)) is a unit eigenvector of the covariance.
        scale = 1.0 / np.sqrt(np.clip(eigvals, 1e-30, None) * (n - 1))
        directions = (xc.T @ eigvecs[:, order].astype("float32")) * scale.astype("float32")
    else:
        cov = (xc.T @ xc).astype("float64") / (n - 1)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:num_components]
        eigvals = np.clip(eigvals[order], 0.0, None)
        directions = eigvecs[:, order].astype("float32")
    kernel = (directions / np.sqrt(eigvals + epsilon).astype("float32")).astype("float32")
    bias = -(mean @ kernel).astype("float32")
    return kernel, bias


@keras.saving.register_keras_serializable(package="tf_netvlad")
class PCAWhitening(keras.layers.Layer):
    """Applies a fitted PCA-whitening `y = xᵀW + b` and L2-normalises the result.

    This is the reference's WPCA layer plus "finalL2". Keeping only the first `D′` outputs
    and re-normalising gives a lower-dimensional descriptor (MATLAB `cropToDim`): build the
    layer with `num_components=D′` and the first `D′` columns of a larger fit.

    Args:
        num_components: int, the output dimension P.
        epsilon: float. Final L2 as x / (‖x‖ + ε).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `(batch, D)`.

    Returns:
        float tensor `(batch, num_components)` with unit L2 norm.
    """

    def __init__(self, num_components, epsilon=L2_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) or num_components < 1:
            raise ValueError(
                f"`num_components` must be an int >= 1. Received: num_components={num_components!r}"
            )
        self.num_components = int(num_components)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dim = input_shape[-1]
        if len(input_shape) != 2 or dim is None:
            raise ValueError(f"PCAWhitening expects (batch, D) with known D. Received: {tuple(input_shape)}")
        self.kernel = self.add_weight(
            name="kernel", shape=(dim, self.num_components), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(self.num_components,), initializer="zeros")

    def call(self, inputs):
        return l2_normalize_norm(ops.matmul(inputs, self.kernel) + self.bias, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_components)

    def set_whitening(self, kernel, bias):
        """Sets the weights from `fit_pca_whitening`, keeping the first `num_components` columns."""
        kernel = np.asarray(kernel, dtype="float32")
        bias = np.asarray(bias, dtype="float32")
        if kernel.shape[1] < self.num_components or kernel.shape[0] != self.kernel.shape[0]:
            raise ValueError(
                f"Whitening kernel must be ({self.kernel.shape[0]}, >= {self.num_components}). "
                f"Received: {kernel.shape}"
            )
        self.kernel.assign(kernel[:, : self.num_components])
        self.bias.assign(bias[: self.num_components])

    def get_config(self):
        config = super().get_config()
        config.update({"num_components": self.num_components, "epsilon": self.epsilon})
        return config
