"""The fast matmul Conv1D/Conv1DTranspose compute exactly what Keras' own layers compute."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from unetsep.train import layers  # noqa: E402


@pytest.mark.parametrize("length,cin,cout,kernel,stride", [
    (1, 8, 16, 5, 2), (2, 16, 8, 5, 2), (4, 4, 6, 5, 2), (8, 3, 5, 4, 2), (3, 5, 7, 3, 1)])
@pytest.mark.parametrize("transpose", [False, True])
def test_fast_layer_equals_stock(length, cin, cout, kernel, stride, transpose):
    stock_cls = keras.layers.Conv1DTranspose if transpose else keras.layers.Conv1D
    fast_cls = layers.Conv1DTranspose if transpose else layers.Conv1D
    stock = stock_cls(cout, kernel, strides=stride, padding="same")
    fast = fast_cls(cout, kernel, strides=stride, padding="same")
    x = np.random.default_rng(0).standard_normal((9, length, cin)).astype("float32")
    stock.build(x.shape)
    fast.build(x.shape)
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in stock.get_weights()]
    stock.set_weights(weights)
    fast.set_weights(weights)
    a, b = np.asarray(stock(x)), np.asarray(fast(x))
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sequences", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_fast_gru_equals_stock(sequences, with_state):
    """Same weights, same outputs and gradients: the hoisted input projection changes nothing."""
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((3, 40, 6)).astype("float32"))
    h0 = tf.constant(rng.standard_normal((3, 5)).astype("float32"))
    # use_cudnn=False: the hoisted path on any machine (with a GPU, "auto" leaves it to cuDNN)
    stock = keras.layers.GRU(5, return_sequences=sequences, use_cudnn=False)
    fast = layers.GRU(5, return_sequences=sequences, use_cudnn=False)
    stock.build(x.shape)
    fast.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in stock.get_weights()]
    stock.set_weights(weights)
    fast.set_weights(weights)
    assert fast._hoistable(None)  # the fast path, not Keras' loop (the fallback test spies on it)
    weigh = rng.standard_normal(stock.compute_output_shape(x.shape)).astype("float32")
    results = []
    for layer in (stock, fast):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, initial_state=h0) if with_state else layer(x)
            loss = tf.reduce_sum(y * weigh)  # every output weighed differently
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
        results.append([np.asarray(y), *map(np.asarray, grads)])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_fast_gru_falls_back_where_it_cannot_hoist(monkeypatch):
    """Keras' own loop runs for what the hoisted one does not handle, and only then."""
    import tensorflow as tf

    gpu = bool(tf.config.list_logical_devices("GPU"))
    assert layers.GRU(3)._hoistable(None) is not gpu  # the default: hoisted unless cuDNN can run
    calls = []
    stock_loop = keras.layers.GRU.inner_loop

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return stock_loop(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.GRU, "inner_loop", spy)
    x = np.random.default_rng(3).standard_normal((2, 7, 4)).astype("float32")
    x[1, 5:] = 0.0  # masked steps for the Masking case
    cases = [({"go_backwards": True}, False), ({"reset_after": False}, False),
             ({"activation": "relu"}, False), ({"dropout": 0.1}, False), ({"use_cudnn": True}, False),
             ({"use_cudnn": False}, True)]
    for kwargs, hoisted in cases:
        stock, fast = keras.layers.GRU(3, **kwargs), layers.GRU(3, **kwargs)
        stock.build(x.shape)
        fast.build(x.shape)
        fast.set_weights(stock.get_weights())
        assert fast._hoistable(None) is hoisted, kwargs
        calls.clear()
        if kwargs.get("use_cudnn") is True:  # without a GPU both refuse, as Keras' GRU does
            if gpu:
                continue
            for layer in (stock, fast):
                with pytest.raises(ValueError, match="cuDNN"):
                    layer(x)
            continue
        np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(stock(x)), atol=1e-6)
        assert calls.count(fast.name) == (0 if hoisted else 1), kwargs
    masked = keras.Sequential([keras.layers.Masking(0.0),
                               layers.GRU(3, use_cudnn=False, name="masked_fast")])
    stock_masked = keras.Sequential([keras.layers.Masking(0.0), keras.layers.GRU(3, use_cudnn=False)])
    masked.build(x.shape)
    stock_masked.build(x.shape)
    masked.set_weights(stock_masked.get_weights())
    calls.clear()
    np.testing.assert_allclose(np.asarray(masked(x)), np.asarray(stock_masked(x)), atol=1e-6)
    assert "masked_fast" in calls  # a mask goes to Keras' loop
