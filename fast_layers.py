"""Keras's BatchNormalization and Dropout, trained through cheaper TensorFlow kernels.

Same variables, same maths, same saved weights; only the kernels that train them differ, and only
on the TensorFlow backend (elsewhere, and for what the fast paths do not cover, Keras's own code
runs). On a CPU, Keras 3's batch-norm is a dozen element-wise ops in float32 where TensorFlow has
one fused kernel each way, and Keras's dropout draws a 32-bit random number per element where 16
bits are enough (bench/README.md has the figures).
"""

from __future__ import annotations

import keras

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
        # oneDNN (CPU) and cuDNN take bfloat16/float16 inputs and compute the statistics in float32.
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma.value, self.beta.value, epsilon=self.epsilon, is_training=True)
        # The fused kernel returns the unbiased (n - 1) variance for the moving average; Keras uses n.
        n = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance = variance * (n - 1.0) / n
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


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
