"""The digits demo: an ANN converted to a spiking network, classifying scikit-learn's 8x8 digits
on the chip (``neurofabric demo``).

Steps: load_digits (1797 samples, pixel values / 16), 70/30 split with random_state=0; train a
ReLU MLP 64-`hidden`-10 (scikit-learn MLPClassifier, biases folded into the chip's neuron bias);
choose the normalisation percentile on a validation part of the *training* data (float IF
simulation); convert (:mod:`neurofabric.host.convert`); load on the chip; rate-encode each test
image over `steps` steps with the deterministic phase accumulator (on chips with an input encoder,
the chip does it: each image is loaded once as 64 intensities, :meth:`Chip.encode`; otherwise
the host streams the spike raster); classify by output spike count (ties broken by the residual membrane potential); report accuracy, wall time, synaptic
events per second and, on a non-model device, whether every spike matched the bit-exact model.
Saves ``raster.png`` (one sample), ``confusion.png`` and ``summary.json`` into `out_dir`.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from neurofabric.host.chip import Chip, Progress
from neurofabric.host.convert import choose_percentile, convert_mlp, readout
from neurofabric.host.encoding import rate_encode
from neurofabric.host.model_backend import ModelBackend

__all__ = ["load_data", "train_mlp", "classify", "run_demo"]

PERCENTILES = (99.0, 99.5, 99.9, 99.99, 100.0)


def sim_shape(hidden=128):
    """The chip shape the demo asks the Verilator sim device for: the default shape (the one
    ``Chip.open("model")`` builds too) when a 64-`hidden`-10 network fits it, else one core big
    enough for 64 inputs + `hidden` axons and `hidden` + 10 neurons; an input encoder channel per
    input pixel either way."""
    from neurofabric.host.backend import DEFAULT_SHAPE
    from neurofabric.host.model import ChipShape
    if hidden <= min(DEFAULT_SHAPE.neurons, DEFAULT_SHAPE.axons):
        return DEFAULT_SHAPE
    return ChipShape(cores=1, neurons=256, axons=256, lanes=8, route_entries=512, encoder_channels=64)


def load_data(seed=0):
    """The digits set scaled to [0, 1], split 70/30 with `seed`: (x_train, x_test, y_train, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    return train_test_split(x / 16.0, y, test_size=0.3, random_state=seed)


_TRAINED = {}


def train_mlp(x, y, hidden=128, seed=0, progress=True):
    """A ReLU MLP in-`hidden`-10; returns (weights, biases, classifier). Training is the slowest
    part of the demo, so trained models are cached by content like the simulator builds (the
    data, `hidden`, `seed` and the scikit-learn version are the key; ``$NEUROFABRIC_CACHE`` or
    the user cache folder), and kept for the life of the process. `progress`: show the elapsed
    time while a model that is not cached yet trains."""
    import pickle
    import warnings

    import sklearn

    from neurofabric.toolchain import cache_key, cached_build, elapsed_progress
    key = cache_key("mlp", np.ascontiguousarray(x, dtype=np.float64).tobytes(),
                    np.ascontiguousarray(y, dtype=np.int64).tobytes(), list(np.shape(x)), hidden, seed,
                    sklearn.__version__)
    if key in _TRAINED:
        return _TRAINED[key]

    def train(folder):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        clf = MLPClassifier((hidden,), activation="relu", alpha=1e-3, max_iter=1000, random_state=seed)
        with warnings.catch_warnings(), elapsed_progress(
                f"training the float MLP 64-{hidden}-10 on {len(y)} samples (cached for next time)",
                enabled=progress):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        (folder / "mlp.pickle").write_bytes(pickle.dumps(clf))

    clf = pickle.loads((cached_build("demo-mlp", key, train) / "mlp.pickle").read_bytes())
    _TRAINED[key] = clf.coefs_, clf.intercepts_, clf
    return _TRAINED[key]


def uses_encoder(chip, converted):
    """Whether the demo can load samples into `chip`'s input encoder (enough channels for the
    input population's targets)."""
    needed = converted.input.size * len(chip.compiled.input_axons[converted.input])
    return 0 < needed <= chip.info.encoder_channels


def classify(chip, converted, x, steps, progress=None, reference=None, on_sample=None, encoder=None):
    """Classify every row of `x` on `chip` (loaded with `converted.network`). Each sample runs
    ``steps + latency`` steps, then :meth:`Chip.reset_state`. The input is the phase code of
    :func:`rate_encode`: made on chip by the input encoder when `encoder` is true (default: when
    the chip has enough channels; the reference then uses its encoder too), else streamed as
    events. Returns a dict with the predictions
    (count readout and tie-broken readout), the output counts, the wall time spent in the chip,
    the synaptic events (input events and spikes of the recorded hidden layers, times their
    fan-out) and, if `reference` (another loaded Chip) is given, the samples whose
    spikes differed between the two."""
    out_pop = converted.layers[-1]
    theta = converted.thresholds[-1]
    run_steps = steps + converted.latency
    spikes = rate_encode(x, steps)
    n = len(x)
    pred_count = np.zeros(n, dtype=np.int64)
    pred = np.zeros(n, dtype=np.int64)
    counts = np.zeros((n, out_pop.size), dtype=np.int64)
    mismatches, synaptic_events, wall = [], 0, 0.0
    fanout = {c.pre: c.post.size for c in converted.connections}
    encoder = uses_encoder(chip, converted) if encoder is None else bool(encoder)
    if encoder and reference is not None and not uses_encoder(reference, converted):
        raise ValueError("the reference chip has too few encoder channels for the demo's input")

    def run(target, i):
        if encoder:
            target.encode({converted.input: x[i]}, mode="phase", steps=steps)
            return target.run(steps=run_steps)
        return target.run({converted.input: spikes[i]}, steps=run_steps)

    with Progress(n, f"classify ({chip.info.build})", progress) as bar:
        for i in range(n):
            t0 = time.perf_counter()
            result = run(chip, i)
            v = chip.read_state(out_pop)["v"]
            chip.reset_state()
            wall += time.perf_counter() - t0
            c = result.counts(out_pop)
            counts[i] = c
            pred_count[i] = int(np.argmax(c))
            pred[i] = int(np.argmax(readout(c, v, theta)))
            synaptic_events += int(spikes[i].sum()) * fanout[converted.input]
            for pop in converted.layers[:-1]:
                if pop in result.recorded:      # hidden layers not routed to the host are not counted
                    synaptic_events += len(result.spikes(pop)) * fanout[pop]
            if reference is not None:
                ref = run(reference, i)
                reference.reset_state()
                if not np.array_equal(ref.raw[:, 1:], result.raw[:, 1:]) or not np.array_equal(
                        ref.raw[:, 0] - ref.start, result.raw[:, 0] - result.start):
                    mismatches.append(i)
            if on_sample is not None:
                on_sample(i, result)
            bar.update(1)
    if encoder:
        for target in (chip, reference):
            if target is not None:
                target.stop_encoding()
    return {"pred": pred, "pred_count": pred_count, "counts": counts, "wall": wall,
            "synaptic_events": synaptic_events, "mismatches": mismatches, "encoder": encoder}


def _plots(out_dir, converted, result, steps, y_true, y_pred, input_raster):
    """``raster.png`` (the first test sample, titled with its true label and the prediction) and
    ``confusion.png``; returns the confusion matrix."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(converted.layers) + 1, 1, figsize=(7, 8), sharex=True)
    t, i = np.nonzero(input_raster)
    axes[0].scatter(t, i, s=6, marker="|", color="tab:blue")
    axes[0].set_ylabel("input\nchannel")
    axes[0].set_ylim(-0.5, input_raster.shape[1] - 0.5)
    for ax, pop in zip(axes[1:], converted.layers):
        s = result.spikes(pop)
        ax.scatter(s[:, 0], s[:, 1], s=6, marker="|", color="k")
        ax.set_ylabel(f"{pop.name}\nneuron")
        ax.set_ylim(-0.5, pop.size - 0.5)
    axes[-1].set_xlabel("time step")
    axes[-1].set_xlim(-0.5, steps + converted.latency - 0.5)
    fig.suptitle(f"spike raster of test sample 0: true label {int(y_true[0])}, predicted {int(y_pred[0])}")
    fig.tight_layout()
    fig.savefig(out_dir / "raster.png", dpi=120)
    plt.close(fig)

    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title(f"digits on the chip: accuracy {np.mean(y_true == y_pred):.2%}")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=120)
    plt.close(fig)
    return matrix


def run_demo(device="sim", steps=16, hidden=128, out_dir="build/demo", limit=None, compare=True,
             progress=None, log=None, seed=0, device_options=None, percentile=None, encoder=None):
    """Run the whole demo; returns the summary dict (also written to ``summary.json``).
    `percentile`: the normalisation percentile, or None to choose it on validation data;
    `encoder`: load samples into the chip's input encoder (None: if the chip has one)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    options = dict(device_options or {})
    if device == "sim":
        options.setdefault("shape", sim_shape(hidden))
    chip = Chip.open(device, **options)       # first, so a missing device fails before training
    reference = None
    try:
        x_train, x_test, y_train, y_test = load_data(seed)
        if limit is not None:
            x_test, y_test = x_test[:limit], y_test[:limit]

        if percentile is None:
            # the percentile is chosen on a validation part of the training data only
            from sklearn.model_selection import train_test_split
            x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=0.25, random_state=seed)
            w_fit, b_fit, _ = train_mlp(x_fit, y_fit, hidden, seed, progress=progress is not False)
            percentile, scores = choose_percentile(w_fit, b_fit, x_val, y_val, steps, rate_encode, PERCENTILES)
            log(f"normalisation percentile {percentile} (validation accuracy by percentile: "
                + ", ".join(f"{p}: {a:.3f}" for p, a in scores.items()) + ")")

        weights, biases, clf = train_mlp(x_train, y_train, hidden, seed, progress=progress is not False)
        float_acc = float(clf.score(x_test, y_test))
        converted = convert_mlp(weights, biases, x_train, percentile=percentile)
        log(f"float MLP 64-{hidden}-10 test accuracy {float_acc:.4f}; thresholds {converted.thresholds}")

        compiled = chip.load(converted.network, record=list(converted.layers))
        log(compiled.summary())
        if compare and chip.info.build != "model":
            s = chip.info
            from neurofabric.host.model import ChipShape
            reference = Chip(ModelBackend(ChipShape(cores=s.cores, neurons=s.neurons, axons=s.axons,
                                                    lanes=s.lanes, route_entries=s.route_entries,
                                                    encoder_channels=s.encoder_channels)))
            reference.load(converted.network, record=list(converted.layers))
        first = {}
        result = classify(chip, converted, x_test, steps, progress=progress, reference=reference,
                          on_sample=lambda i, r: first.setdefault("r", r) if i == 0 else None, encoder=encoder)
        stats = chip.stats()
        build = chip.info.build
    finally:
        chip.close()
        if reference is not None:
            reference.close()

    acc = float(np.mean(result["pred"] == y_test))
    acc_count = float(np.mean(result["pred_count"] == y_test))
    matrix = _plots(out_dir, converted, first["r"], steps, y_test, result["pred"], rate_encode(x_test[0], steps))
    summary = {
        "device": device, "build": build, "steps": steps, "hidden": hidden, "samples": int(len(y_test)),
        "input": "on-chip encoder" if result["encoder"] else "host spike events",
        "percentile": percentile, "float_accuracy": float_acc,
        "accuracy": acc, "accuracy_count_only": acc_count,
        "chip_wall_s": result["wall"], "total_wall_s": time.perf_counter() - t_start,
        "synaptic_events": result["synaptic_events"],
        "synaptic_events_per_s": result["synaptic_events"] / result["wall"] if result["wall"] else 0.0,
        "model_agreement": None if reference is None else
        1.0 - len(result["mismatches"]) / max(1, len(y_test)),
        "mismatched_samples": result["mismatches"][:20],
        "thresholds": list(converted.thresholds),
        "weight_exp": {str(k): v for k, v in compiled.weight_exp.items()},
        "quantisation": [{"connection": f"{r.connection.pre.name}->{r.connection.post.name}",
                          "scale": r.scale, "clipped": r.clipped, "zeroed": r.zeroed,
                          "max_error": r.max_error} for r in compiled.reports],
        "counters": stats, "confusion": matrix.tolist(),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(s):
    lines = [
        f"device {s['device']} ({s['build']}), {s['samples']} test samples, T = {s['steps']} steps, "
        f"input by {s['input']}",
        f"accuracy {s['accuracy']:.4f} (spike count with membrane tie-break); "
        f"{s['accuracy_count_only']:.4f} (spike count, ties to the lowest class); float MLP {s['float_accuracy']:.4f}",
        f"chip time {s['chip_wall_s']:.2f} s, {s['synaptic_events']} synaptic events, "
        f"{s['synaptic_events_per_s'] / 1e6:.2f} M synaptic events/s; total {s['total_wall_s']:.1f} s",
    ]
    if s["model_agreement"] is not None:
        lines.append(f"identical spikes to the bit-exact model in {s['model_agreement']:.2%} of samples")
    return "\n".join(lines)
