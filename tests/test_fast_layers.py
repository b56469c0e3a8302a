"""The fast batch-norm and dropout: Keras's results through TensorFlow's cheaper kernels."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fast_layers


def graph_ops(fn) -> set[str]:
    """The op types of the graph a tf.function traces for `fn`."""
    return {op.type for op in tf.function(fn).get_concrete_function().graph.get_operations()}


@pytest.fixture(params=["float32", "mixed_bfloat16", "mixed_float16"])
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def test_batch_norm_trains_through_the_fused_kernel(policy):
    fast_bn, keras_bn = fast_layers.BatchNormalization(), keras.layers.BatchNormalization()
    for layer in (fast_bn, keras_bn):
        layer.build((4, 6, 6, 8))
    x = tf.cast(tf.random.normal((4, 6, 6, 8)), fast_bn.compute_dtype)

    assert "FusedBatchNormV3" in graph_ops(lambda: fast_bn(x, training=True))
    assert "FusedBatchNormV3" not in graph_ops(lambda: keras_bn(x, training=True))


# 5x5 pixels: one fused kernel; 4x4 pixels of 7 or 12 channels: rows of 16 or 4 pixels (multiples
# of 16 channels); one image of 4x4 and 7 channels: a single row, whose columns have no variance;
# 2-D inputs: Keras's own code with the one-pass statistics (what JAX runs for every shape).
@pytest.mark.parametrize("shape", [(8, 5, 5, 7), (8, 4, 4, 7), (8, 4, 4, 12), (8, 4, 4, 16), (1, 4, 4, 7), (64, 7)],
                         ids=str)
def test_batch_norm_matches_keras_outputs_gradients_and_moving_statistics(policy, shape):
    channels = shape[-1]
    rng = np.random.default_rng(1)  # the same inputs whatever ran before (TensorFlow's op seeds are not)
    x = tf.constant(rng.normal(size=shape) * 3.0 + np.arange(channels), tf.float32)  # means differ by channel
    keras_bn, fast_bn = keras.layers.BatchNormalization(momentum=0.5), fast_layers.BatchNormalization(momentum=0.5)
    x = tf.cast(x, fast_bn.compute_dtype)
    for layer in (keras_bn, fast_bn):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, channels))
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    weights = tf.constant(rng.normal(size=shape), tf.float32)  # a loss whose gradients do not cancel out

    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        return [y, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])]

    tolerance = 1e-5 if policy == "float32" else 2e-2
    for expected, got in zip(outputs_and_gradients(keras_bn), outputs_and_gradients(fast_bn)):
        expected = np.asarray(expected, np.float32)
        # Gamma's and beta's gradients are sums over every pixel, added up in another order: within
        # float32 rounding of their largest value, not of each.
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=tolerance,
                                   atol=tolerance * max(1.0, np.abs(expected).max()))
    np.testing.assert_allclose(fast_bn.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_bn.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-5)
    # In inference both use the moving statistics, through Keras's code (float16 rounds them within 1e-3).
    tolerance = 1e-3 if policy == "mixed_float16" else 1e-5
    np.testing.assert_allclose(np.asarray(fast_bn(x), np.float32), np.asarray(keras_bn(x), np.float32),
                               rtol=tolerance, atol=tolerance)


def two_pass_variance(x: np.ndarray) -> np.ndarray:
    """Each channel's variance (over n), in float64."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return ((x - x.mean(0)) ** 2).mean(0)


def test_one_pass_batch_statistics_stay_accurate_for_inputs_far_from_zero():
    rng = np.random.default_rng(0)
    layer = fast_layers.BatchNormalization()
    layer.build((None, 4))

    # A first step, whose moving mean is still 0: means 10 standard deviations from zero.
    x = (rng.normal(size=(20_000, 4)) + 10.0).astype(np.float32)
    mean, variance = layer._moments(tf.constant(x), None)
    np.testing.assert_allclose(mean.numpy(), x.mean(0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), two_pass_variance(x), rtol=1e-3)

    # Once the moving mean has followed the batches, 10,000 standard deviations are as accurate:
    # unshifted, the sums of squares (1e8) would leave the variance (1) to float32's rounding.
    x = (rng.normal(size=(20_000, 4)) + 1e4).astype(np.float32)
    layer.moving_mean.assign(x.mean(0) + 0.5)
    mean, variance = layer._moments(tf.constant(x), None)
    np.testing.assert_allclose(variance.numpy(), two_pass_variance(x), rtol=1e-3)


@pytest.mark.slow
def test_on_jax_the_batch_norm_gives_keras_outputs_gradients_and_moving_statistics():
    check = textwrap.dedent("""
        import jax, jax.numpy as jnp, keras, numpy as np
        import fast_layers

        def run(layer, x, weights):
            def loss(trainable, x):
                y, non_trainable = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables],
                                                        x, training=True)
                return jnp.sum(y.astype("float32") * weights), (y, non_trainable)
            grads, (y, moving) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
                [v.value for v in layer.trainable_variables], x)
            return [y, grads[1], *grads[0], *moving]

        rng = np.random.default_rng(1)
        for policy, tolerance in (("float32", 1e-4), ("mixed_bfloat16", 2e-2)):
            keras.config.set_dtype_policy(policy)
            x = rng.normal(size=(8, 5, 5, 16)) * 3.0 + np.arange(16)  # means differ by channel
            ours, theirs = fast_layers.BatchNormalization(momentum=0.5), keras.layers.BatchNormalization(momentum=0.5)
            x = jnp.asarray(x, ours.compute_dtype)
            for layer in (ours, theirs):
                layer.build(x.shape)
                layer.gamma.assign(np.linspace(0.5, 2.0, 16))
                layer.beta.assign(np.linspace(-1.0, 1.0, 16))
            weights = jnp.asarray(rng.normal(size=x.shape), "float32")
            for got, expected in zip(run(ours, x, weights), run(theirs, x, weights), strict=True):
                np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                                           rtol=tolerance, atol=tolerance)
        print("same")
        """)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          cwd=Path(fast_layers.__file__).parent, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.stdout.strip() == "same", done.stderr[-3000:]


def test_dropout_drops_the_rate_and_keeps_the_mean(policy):
    layer = fast_layers.Dropout(0.3, seed=7)
    ones = tf.ones((125, 99, 81), layer.compute_dtype)  # an odd number of elements: one 16-bit half is unused

    assert "StatelessRandomUniformFullIntV2" in graph_ops(lambda: layer(ones, training=True))
    out = np.asarray(layer(ones, training=True), np.float64)
    assert abs((out == 0).mean() - 0.3) < 0.002  # 1,002,375 draws: 4 standard deviations
    assert abs(out.mean() - 1.0) < 0.005  # kept values are scaled by 1 / (1 - rate)
    values = np.unique(out)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=5e-3)
    again = np.asarray(layer(ones, training=True), np.float64)
    assert (again != out).mean() > 0.3  # a new mask every step
    np.testing.assert_array_equal(np.asarray(layer(ones, training=False)), np.asarray(ones))
    # Compiled by XLA, as Keras compiles training steps on a GPU, the mask is XLA's own random numbers.
    compiled = np.asarray(tf.function(lambda: layer(ones, training=True), jit_compile=True)(), np.float64)
    assert abs((compiled == 0).mean() - 0.3) < 0.002 and abs(compiled.mean() - 1.0) < 0.005


def test_dropouts_gradient_flows_through_the_kept_elements_only():
    layer = fast_layers.Dropout(0.5, seed=3)
    x = tf.random.normal((16, 8, 8, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    gradient = tape.gradient(total, x).numpy()
    kept = y.numpy() != 0
    np.testing.assert_allclose(gradient[kept], 2.0)
    np.testing.assert_array_equal(gradient[~kept], 0.0)


def test_a_model_with_the_fast_layers_saves_and_loads_with_its_weights(tmp_path):
    inputs = keras.Input((6, 6, 2))
    x = fast_layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, fast_layers.Dropout(0.2)(x))
    model.layers[2].moving_mean.assign(np.arange(4.0))
    model.save(tmp_path / "m.keras")

    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(loaded.layers[2].moving_mean.numpy(), np.arange(4.0))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])  # XLA: Keras's choice on a GPU
@pytest.mark.parametrize("filters", [16, 12])  # one fused kernel; rows of 4 pixels
def test_fit_trains_the_fast_batch_norms_scale_offset_and_moving_statistics(jit_compile, filters):
    inputs = keras.Input((8, 8, 3))
    x = fast_layers.BatchNormalization()(keras.layers.Conv2D(filters, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(fast_layers.Dropout(0.3)(x))))
    model.compile("adam", "mse", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 8, 8, 3)), rng.random((64, 2)), epochs=2, verbose=0)

    bn = model.layers[2]
    assert np.abs(bn.gamma.numpy() - 1.0).max() > 1e-3 and np.abs(bn.beta.numpy()).max() > 1e-3
    assert np.abs(bn.moving_mean.numpy()).max() > 1e-3


def test_glorot_uniform_draws_keras_own_weights_on_tensorflow():
    shape = (3, 3, 16, 32)
    ours, theirs = fast_layers.GlorotUniform(seed=7)(shape), keras.initializers.GlorotUniform(seed=7)(shape)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


@pytest.mark.slow
def test_on_jax_a_network_builds_without_compiling_a_random_program_per_kernel_shape():
    check = textwrap.dedent("""
        import logging, math
        import jax, keras, numpy as np
        import hyperspace
        from neural_net import build_model

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        jax.config.update("jax_log_compiles", True)

        def kernels(seed):
            keras.utils.set_random_seed(seed)
            model = build_model(hyperspace.SEED_BEST_SPACE)
            return [w.numpy() for w in model.weights if w.name == "kernel"]

        first, again, other = kernels(1), kernels(1), kernels(2)
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)), "not seeded"
        assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True)), "seed ignored"
        for kernel in first:  # Glorot's uniform: limit sqrt(6 / (fan_in + fan_out)), standard deviation limit / sqrt(3)
            receptive = math.prod(kernel.shape[:-2])
            limit = math.sqrt(6 / (receptive * (kernel.shape[-2] + kernel.shape[-1])))
            assert np.abs(kernel).max() <= limit and abs(kernel.std() * math.sqrt(3) / limit - 1) < 0.05, kernel.shape
        print(len(first), "kernels")
        """)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          cwd=Path(fast_layers.__file__).parent, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.stdout.strip().endswith("kernels"), done.stderr[-3000:]
    assert "Compiling jit(" in done.stderr  # the compile log works: zeros and ones for the biases are compiled
    assert "jit(_uniform)" not in done.stderr and "jit(_normal)" not in done.stderr
