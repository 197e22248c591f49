"""The digits demo end to end on the model (demos/digits.py)."""

import json

import numpy as np

from neurofabric.demos.digits import classify, format_summary, load_data, run_demo, train_mlp
from neurofabric.host import Chip
from neurofabric.host.convert import convert_mlp
from neurofabric.host.model import ChipShape
from neurofabric.host.model_backend import ModelBackend


def test_run_demo_on_the_model(tmp_path):
    logs = []
    summary = run_demo(device="model", steps=16, out_dir=tmp_path, limit=60, progress=False, log=logs.append,
                       percentile=99.9)
    for name in ("raster.png", "confusion.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 1000 or name == "summary.json"
    assert (tmp_path / "raster.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["samples"] == 60 and saved["build"] == "model" and saved["model_agreement"] is None
    assert np.array(saved["confusion"]).sum() == 60
    assert summary["accuracy"] >= 0.9          # 60 samples; the full-set figure is in test_convert
    assert summary["synaptic_events_per_s"] > 0 and summary["percentile"] in (99.0, 99.5, 99.9, 99.99, 100.0)
    assert any("float MLP" in line for line in logs)
    text = format_summary(summary)
    assert "accuracy" in text and "synaptic events/s" in text


def test_classify_compares_spikes_with_a_reference():
    x_train, x_test, y_train, _ = load_data(0)
    weights, biases, _ = train_mlp(x_train[:300], y_train[:300], hidden=32, seed=0)
    conv = convert_mlp(weights, biases, x_train[:300])
    shape = ChipShape(cores=2, neurons=64, axons=128, lanes=8, route_entries=256)
    with Chip(ModelBackend(shape)) as a, Chip(ModelBackend(shape)) as b:
        for chip in (a, b):
            chip.load(conv.network)
        same = classify(a, conv, x_test[:10], 8, progress=False, reference=b)
        assert same["mismatches"] == []
        # a reference whose weights differ must be caught
        b.backend.model.cores[0].weights[:, :] //= 2
        different = classify(a, conv, x_test[:10], 8, progress=False, reference=b)
        assert len(different["mismatches"]) > 0


def test_raster_is_titled_with_the_true_label_and_the_prediction(tmp_path, monkeypatch):
    import matplotlib.figure
    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, text, **kw: titles.append(text) or original(self, text, **kw))
    _, x_test, _, y_test = load_data(0)
    run_demo(device="model", steps=8, hidden=16, out_dir=tmp_path, limit=1, progress=False, log=lambda _: None,
             percentile=99.9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    predicted = int(np.argmax(summary["confusion"][int(y_test[0])]))      # one sample: its row holds a 1
    assert titles == [f"spike raster of test sample 0: true label {int(y_test[0])}, predicted {predicted}"]


def test_training_is_cached_by_content(tmp_path, monkeypatch):
    """A second training of the same data, size and seed comes from the cache (even in a new
    process: the in-process memo is cleared here); other data trains anew."""
    import sklearn.neural_network

    from neurofabric.demos import digits
    monkeypatch.setenv("NEUROFABRIC_CACHE", str(tmp_path))
    monkeypatch.setattr(digits, "_TRAINED", {})
    fits = []
    original = sklearn.neural_network.MLPClassifier.fit
    monkeypatch.setattr(sklearn.neural_network.MLPClassifier, "fit",
                        lambda self, x, y: fits.append(len(y)) or original(self, x, y))
    x_train, _, y_train, _ = load_data(0)
    first = train_mlp(x_train[:200], y_train[:200], hidden=8, seed=0, progress=False)
    digits._TRAINED.clear()
    again = train_mlp(x_train[:200], y_train[:200], hidden=8, seed=0, progress=False)
    assert fits == [200]
    for a, b in zip(first[0] + first[1], again[0] + again[1]):
        assert np.array_equal(a, b)
    train_mlp(x_train[:150], y_train[:150], hidden=8, seed=0, progress=False)
    assert fits == [200, 150]
    assert len(list((tmp_path / "demo-mlp").iterdir())) >= 2
