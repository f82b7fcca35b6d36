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
