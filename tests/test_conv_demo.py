"""The convolutional digits demo (demos/conv.py): the NIR graph is the trained CNN, the
trained weights are cached by content, the demo runs on the model and bit-exact on the sim
device (on a small subset: the full figures are bench/e2e.py's conv_* keys)."""

import json

import nir
import numpy as np
import pytest

from neurofabric.demos.conv import cnn_forward, cnn_graph, run_conv_demo, train_cnn
from neurofabric.demos.digits import load_data, sim_shape
from neurofabric.host import lowering


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROFABRIC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "conv_digits"


def test_graph_is_the_normalised_cnn_and_training_is_cached(cache):
    x_train, x_test, y_train, _ = load_data(0)
    params = train_cnn(x_train[:200], y_train[:200], channels=3, epochs=2)
    assert len(list(cache.glob("*.npz"))) == 1
    again = train_cnn(x_train[:200], y_train[:200], channels=3, epochs=2)
    for k in params:
        np.testing.assert_array_equal(params[k], again[k])
    other = train_cnn(x_train[:200], y_train[:200], channels=3, epochs=3)
    assert len(list(cache.glob("*.npz"))) == 2 and not np.array_equal(other["w2"], params["w2"])

    graph = cnn_graph(params, x_train[:200], percentile=99.0)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert sorted(kinds.values()) == ["Affine", "Conv2d", "Flatten", "IF", "IF", "Input", "Output", "SumPool2d"]
    # the graph's synapses with ReLU instead of IF neurons compute the CNN, scaled by 1 / lambda
    n = graph.nodes
    conv = lowering.Conv.make(n["conv"].weight, (1, 8, 8), n["conv"].stride, n["conv"].padding,
                              n["conv"].dilation, n["conv"].groups, n["conv"].bias)
    pool = lowering.Pool.make(conv.out_shape, n["pool"].kernel_size, n["pool"].stride, n["pool"].padding)
    fc = lowering.Dense(n["fc"].weight, n["fc"].bias)
    hidden = np.maximum(conv.apply(x_test[:20]), 0)
    logits = fc.apply(pool.apply(hidden))
    expected = cnn_forward(params, x_test[:20])
    ratio = expected / logits
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-9)
    assert ratio[0, 0] > 0


def test_conv_demo_on_the_model(cache, tmp_path):
    logs = []
    s = run_conv_demo(device="model", steps=16, channels=4, epochs=10, limit=12, percentile=99.9, progress=False,
                      log=logs.append, out_dir=tmp_path / "out")
    assert s["samples"] == 12 and s["model_agreement"] is None
    # 12 samples of a small net trained for 10 epochs; the full figure is bench/e2e.py's
    assert s["accuracy"] >= 0.9 and s["accuracy"] >= s["float_accuracy"] - 1 / 12
    # kernel words: the 4 3x3 kernels and the 10 x 64 dense weights; dense: 64 x 256 + 256 x 10
    assert s["memory"]["kernel_words"] == 4 * 9 + 10 * 64
    assert s["memory"]["dense_words"] == 64 * 256 + 256 * 10
    assert any("Conv, 36 kernel words" in line for line in logs)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["accuracy"] == s["accuracy"]
    graph = nir.read(tmp_path / "out" / "conv_digits.nir")
    assert isinstance(graph.nodes["conv"], nir.Conv2d)


@pytest.mark.verilator
def test_conv_demo_on_the_sim_device_matches_the_model(cache):
    # 2 channels (128 + 10 neurons, 64 + 128 axons) fit the default sim device (2 x 128 x 128), whose
    # build the other sim tests share (the 2 x 512 x 512 chip of conv_shape() takes minutes)
    s = run_conv_demo(device="sim", steps=8, channels=2, epochs=10, limit=4, percentile=99.9, progress=False,
                      log=lambda m: None, device_options={"shape": sim_shape()})
    assert s["build"] != "model"
    assert s["model_agreement"] == 1.0 and s["mismatched_samples"] == []


def test_spike_comparison_ignores_the_order_between_cores_within_a_step():
    from types import SimpleNamespace

    from neurofabric.demos.conv import _spikes
    a = SimpleNamespace(raw=np.array([[10, 1, 3], [10, 0, 5], [11, 0, 1]]), start=10)
    b = SimpleNamespace(raw=np.array([[20, 0, 5], [20, 1, 3], [21, 0, 1]]), start=20)
    c = SimpleNamespace(raw=np.array([[20, 0, 5], [21, 1, 3], [21, 0, 1]]), start=20)   # a spike one step later
    np.testing.assert_array_equal(_spikes(a), _spikes(b))
    assert not np.array_equal(_spikes(a), _spikes(c))
