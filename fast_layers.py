"""Keras's BatchNormalization and Dropout, trained through cheaper kernels; its GlorotUniform, drawn without compiling.

Same variables, same maths, same saved weights; only the kernels that train them differ. On the
TensorFlow backend, Keras 3's batch-norm is a dozen element-wise ops in float32 where TensorFlow
has one fused kernel each way (oneDNN's on a CPU, fast when the channels are a multiple of 16;
other widths go through it as rows of a few neighbouring pixels), and Keras's dropout draws a
32-bit random number per element where 16 bits are enough. Elsewhere (JAX) and for what those
paths do not cover, Keras's own code runs, with the batch statistics taken in one pass over the
inputs instead of two (bench/README.md has the figures).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras.src.initializers.random_initializers import compute_fans

PACKAGE = "cifar100_hyperopt"


def _tensorflow():
    """TensorFlow when it is Keras's backend, else None (a JAX machine may not have it)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains 4-D channels-last inputs with TensorFlow's fused kernel."""

    def call(self, inputs, training=None, mask=None):
        tf = _tensorflow()
        if not (tf and training and self.trainable and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.center and self.scale and not self.renorm):
            return super().call(inputs, training=training, mask=mask)
        group = _pixel_group(tf, inputs)
        if group == 1:
            outputs, mean, variance = _fused_batch_norm(tf, inputs, self.gamma.value, self.beta.value, self.epsilon)
        else:
            outputs, mean, variance = _grouped_batch_norm(tf, inputs, self.gamma.value, self.beta.value, self.epsilon, group)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)

    def _moments(self, inputs, mask):
        """The batch's mean and variance from one read of the inputs where Keras's code reads them twice.

        The sums of the inputs and of their squares take one pass, which XLA fuses into one kernel
        (their gradients into one more): `SEED_BEST_SPACE`'s training step compiled for an H100
        moves 6% fewer bytes in 53 fewer kernels (bench/README.md). As in Flax's default, the
        variance is the mean square less the squared mean; the inputs are first shifted by the
        moving mean, so that once it has followed the batches that is not the difference of two
        large numbers.
        """
        if mask is not None:
            return super()._moments(inputs, mask)
        shape = [1] * len(inputs.shape)
        shape[self.axis] = inputs.shape[self.axis]
        shift = keras.ops.stop_gradient(keras.ops.cast(self.moving_mean, inputs.dtype))
        shifted = inputs - keras.ops.reshape(shift, shape)
        mean = keras.ops.mean(shifted, self._reduction_axes)
        variance = keras.ops.mean(keras.ops.square(shifted), self._reduction_axes) - keras.ops.square(mean)
        return mean + shift, keras.ops.maximum(variance, 0.0)


def _fused_batch_norm(tf, x, gamma, beta, epsilon):
    """Training batch-norm in one fused kernel each way: outputs, batch mean, batch variance (over n)."""
    # oneDNN (CPU) and cuDNN take bfloat16/float16 inputs and compute the statistics in float32.
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, is_training=True)
    # The fused kernel returns the unbiased (n - 1) variance for the moving average; Keras uses n.
    n = tf.cast(tf.size(x) // tf.shape(x)[-1], variance.dtype)
    return outputs, mean, variance * (n - 1.0) / n


def _pixel_group(tf, x) -> int:
    """How many neighbouring pixels `_grouped_batch_norm` takes as one row: 1 for the plain fused kernel.

    oneDNN's fused batch-norm is fast for channels in multiples of 16 and several times slower
    otherwise (63 channels: 116 ms a step against 44 at 64, bench/README.md). Only where
    TensorFlow sees no GPU: the grouping was measured on oneDNN.
    """
    _, height, width, channels = x.shape
    if None in (height, width, channels) or tf.config.list_logical_devices("GPU"):
        return 1
    group = 16 // math.gcd(channels, 16)
    while (height * width) % group:  # a row must not straddle two images, whatever the batch size
        group //= 2
    return group


def _grouped_batch_norm(tf, x, gamma, beta, epsilon, group):
    """Training batch-norm through fused kernels on rows of `group` pixels, a multiple of 16 channels if the image allows.

    The inputs viewed as [rows, 1, 1, group * channels] (a free reshape) give each channel `group`
    columns; their statistics combine into the channel's, the outputs are normalised by those
    (the fused kernel in inference mode), and the gradient is the inference kernel's plus the
    terms for the statistics' dependence on the inputs.
    """
    channels = x.shape[-1]
    view = tf.reshape(x, [-1, 1, 1, group * channels])
    rows = tf.cast(tf.shape(view)[0], tf.float32)
    n = rows * group

    def per_channel(columns):
        return tf.reshape(columns, [group, channels])

    def tiled(per_channel_values):
        return tf.tile(per_channel_values, [group])

    columns = tf.ones([group * channels])
    _, column_mean, column_variance = tf.compat.v1.nn.fused_batch_norm(
        view, columns, tf.zeros_like(columns), epsilon=epsilon, is_training=True)
    column_mean = tf.stop_gradient(column_mean)
    # Pooled over the columns (all of `rows` values): within-column plus between-column variance.
    mean = tf.reduce_mean(per_channel(column_mean), 0)
    mean_columns = tiled(mean)
    variance = tf.reduce_mean(per_channel(tf.stop_gradient(column_variance) * (rows - 1.0) / rows
                                          + tf.square(column_mean - mean_columns)), 0)
    variance_columns = tiled(variance)
    inverse_std = tf.math.rsqrt(variance + epsilon)

    @tf.custom_gradient
    def normalize(view, gamma, beta):
        gamma_columns = tiled(gamma)
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            view, gamma_columns, tiled(beta), mean=mean_columns, variance=variance_columns,
            epsilon=epsilon, is_training=False)

        def gradient(upstream):
            # Inference-mode gradient: upstream * gamma / std, and per column the sums of
            # upstream * normalised inputs (d gamma) and of upstream (d beta).
            partial, d_gamma, d_beta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=upstream, x=view, scale=gamma_columns, reserve_space_1=mean_columns,
                reserve_space_2=variance_columns, reserve_space_3=tf.zeros([0]), epsilon=epsilon,
                data_format="NHWC", is_training=False)
            d_gamma = tf.reduce_sum(per_channel(d_gamma), 0)
            d_beta = tf.reduce_sum(per_channel(d_beta), 0)
            # What the batch mean and variance add: -gamma / std * (d_beta + x_hat * d_gamma) / n.
            scale = gamma * inverse_std
            correction, _, _ = tf.compat.v1.nn.fused_batch_norm(
                view, tiled(-scale * d_gamma / n), tiled(-scale * d_beta / n), mean=mean_columns,
                variance=variance_columns, epsilon=epsilon, is_training=False)
            return partial + correction, d_gamma, d_beta

        return outputs, gradient

    return tf.reshape(normalize(view, gamma, beta), tf.shape(x)), mean, variance


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose TensorFlow mask takes 16 random bits per element instead of 32.

    The rate is honoured to 1/65,536 (Keras's own mask in bfloat16 draws only 7 bits, 1/128).
    """

    def call(self, inputs, training=False):
        tf = _tensorflow()
        threshold = round(self.rate * 65536)  # an element is kept when its 16 bits are >= threshold
        if not (tf and training and 0 < threshold < 65536 and self.noise_shape is None):
            return super().call(inputs, training=training)
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 2), tf.int32)  # as Keras draws it
        n = tf.size(inputs)
        words = tf.random.stateless_uniform([(n + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:n], tf.shape(inputs))
        # One multiply by a mask of 0 and 1 / (1 - rate) each way: a select on the full-size inputs
        # would also need a full-size zeros tensor, and the scaling a pass of its own (on a CPU).
        scale = tf.constant(65536 / (65536 - threshold), inputs.dtype)
        return inputs * tf.where(bits >= tf.constant(threshold, tf.uint16), scale, tf.zeros_like(scale))


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlorotUniform(keras.initializers.GlorotUniform):
    """`keras.initializers.GlorotUniform`, drawn by numpy on JAX, where Keras's draw compiles a program per kernel shape.

    On JAX, Keras draws a kernel with a compiled random-number program, one for each shape: 0.3 to
    1.4 s each on a CPU, in every trial whose network has shapes not met before; building
    SEED_BEST_SPACE took 7.1 s instead of 0.9 (bench/README.md). Numpy draws the same distribution
    from the same seed (Keras's, which `keras.utils.set_random_seed` fixes) with nothing to compile.
    On TensorFlow, whose random ops run without compiling, Keras's own draw.
    """

    def __call__(self, shape, dtype=None):
        if keras.backend.backend() != "jax" or not isinstance(self.seed, int):
            return super().__call__(shape, dtype)
        fan_in, fan_out = compute_fans(shape)
        limit = math.sqrt(3.0 * self.scale / max(1.0, (fan_in + fan_out) / 2.0))
        values = np.random.default_rng(self.seed).uniform(-limit, limit, shape)
        return values.astype(keras.backend.standardize_dtype(dtype or keras.config.floatx()))
