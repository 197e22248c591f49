"""The convolutional digits demo: a small CNN trained in numpy, written as a NIR graph
(Conv2d + IF + SumPool2d + Flatten + Affine + IF), imported with :func:`from_nir` (the
convolution and pooling lowered to dense projections) and run on the chip.

Steps: scikit-learn's 8x8 digits (pixel values / 16), 70/30 split with random_state=0; a ReLU
CNN ``conv 3x3 (channels, padding 1) -> sum pool 2x2 -> dense 10`` trained with Adam in numpy
(cached on disk by a hash of the data and the settings); data-based normalisation
(:func:`neurofabric.host.convert.normalise_mlp` on the dense equivalent, the percentile chosen
on a validation quarter of the training data by :func:`choose_percentile`); the normalised
network as a NIR graph of IF neurons (threshold 1, reset by subtraction); import; every test
image rate-coded over `steps` steps by the chip's input encoder; classification by output spike
count with the membrane tie-break (:func:`neurofabric.demos.digits.classify`).

The network needs 512 + 10 neurons and 512 axons into the output layer, more than the default
chip shapes hold, so the demo opens its devices with :func:`conv_shape`.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from neurofabric.demos.digits import classify, load_data
from neurofabric.host import lowering
from neurofabric.host.chip import Chip
from neurofabric.host.convert import ConvertedMLP, choose_percentile, normalise_mlp
from neurofabric.host.encoding import rate_encode
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.nir_io import from_nir

__all__ = ["conv_shape", "train_cnn", "cnn_forward", "cnn_graph", "build_network", "run_conv_demo"]

PERCENTILES = (99.0, 99.5, 99.9, 99.99, 100.0)
SIDE = 8            #: the digits are 8 x 8
KERNEL = 3
POOL = 2


def conv_shape():
    """The chip shape the demo asks for: a core of 512 neurons for the convolution layer and one
    with 512 axons for the output layer (the default shapes have at most 256)."""
    from neurofabric.host.model import ChipShape
    return ChipShape(cores=2, neurons=512, axons=512, lanes=8, route_entries=2048, encoder_channels=64)


def _patches(x):
    """(B, 64 positions, 9) 3x3 neighbourhoods of the zero-padded 8x8 images."""
    img = np.pad(np.asarray(x, dtype=np.float64).reshape(-1, SIDE, SIDE), ((0, 0), (1, 1), (1, 1)))
    out = np.empty((len(img), SIDE, SIDE, KERNEL * KERNEL))
    for i in range(KERNEL):
        for j in range(KERNEL):
            out[..., i * KERNEL + j] = img[:, i:i + SIDE, j:j + SIDE]
    return out.reshape(len(img), SIDE * SIDE, KERNEL * KERNEL)


def _pool_matrix():
    side = SIDE // POOL
    m = np.zeros((SIDE * SIDE, side * side))
    for y in range(SIDE):
        for x in range(SIDE):
            m[y * SIDE + x, (y // POOL) * side + x // POOL] = 1.0
    return m


def cnn_forward(params, x):
    """Logits of the CNN: ``relu(conv(x) + b1)`` summed over 2x2 blocks, flattened channel-major,
    then ``@ w2.T + b2``. `params`: dict kernel (C, 1, 3, 3), b1 (C,), w2 (10, C*16), b2 (10,)."""
    hidden = _hidden(params, _patches(x))
    return hidden[2] @ params["w2"].T + params["b2"]


def _hidden(params, patches):
    k = params["kernel"].reshape(len(params["kernel"]), -1)          # (C, 9)
    z = np.einsum("bpk,ck->bcp", patches, k) + params["b1"][None, :, None]
    a = np.maximum(z, 0.0)
    pooled = (a @ _pool_matrix()).reshape(len(patches), -1)            # (B, C*16), channel-major
    return z, a, pooled


def _cache_dir():
    root = os.environ.get("NEUROFABRIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "neurofabric")
    return Path(root) / "conv_digits"


def _shift(images, rng):
    """Each 8x8 image moved by -1, 0 or +1 pixels in each direction (zeros shifted in)."""
    img = np.pad(images.reshape(-1, SIDE, SIDE), ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, (2, len(img)))
    rows = (np.arange(SIDE)[None, :] + dy[:, None])[:, :, None]
    cols = (np.arange(SIDE)[None, :] + dx[:, None])[:, None, :]
    return img[np.arange(len(img))[:, None, None], rows, cols].reshape(len(img), -1)


def train_cnn(x, y, channels=8, epochs=150, seed=0, lr=3e-3, weight_decay=1e-4, batch=32, augment=True, cache=True):
    """Train the CNN with Adam (softmax cross-entropy, L2 `weight_decay`, the learning rate
    decayed to 0 on a cosine, half of each batch shifted by a pixel when `augment`) and return
    its params.
    With `cache`, the result is stored under ``$NEUROFABRIC_CACHE`` (default
    ``~/.cache/neurofabric``) keyed by a hash of the data and every setting."""
    x, y = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.int64)
    key = hashlib.sha256(x.tobytes() + y.tobytes() + json.dumps(
        [channels, epochs, seed, lr, weight_decay, batch, augment, KERNEL, POOL, 2]).encode()).hexdigest()[:24]
    path = _cache_dir() / f"{key}.npz"
    if cache and path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    rng = np.random.default_rng(seed)
    pooled_size = channels * (SIDE // POOL) ** 2
    params = {"kernel": rng.normal(0, np.sqrt(2 / KERNEL ** 2), (channels, 1, KERNEL, KERNEL)),
              "b1": np.zeros(channels),
              "w2": rng.normal(0, np.sqrt(2 / pooled_size), (10, pooled_size)), "b2": np.zeros(10)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    patches, pool, step = _patches(x), _pool_matrix(), 0
    total = epochs * -(-len(x) // batch)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            batch_patches = patches[idx]
            if augment:
                moved = rng.random(len(idx)) < 0.5
                batch_patches = batch_patches.copy()
                batch_patches[moved] = _patches(_shift(x[idx[moved]], rng))
            z, a, pooled = _hidden(params, batch_patches)
            logits = pooled @ params["w2"].T + params["b2"]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            p /= len(idx)
            g_pooled = (p @ params["w2"]).reshape(len(idx), channels, -1)
            g_z = (g_pooled @ pool.T) * (z > 0)                           # (B, C, 64)
            grads = {"w2": p.T @ pooled + weight_decay * params["w2"], "b2": p.sum(0),
                     "kernel": np.einsum("bcp,bpk->ck", g_z, batch_patches).reshape(params["kernel"].shape)
                     + weight_decay * params["kernel"], "b1": g_z.sum((0, 2))}
            rate = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            step += 1
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                params[k] -= rate * (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **params)
        os.replace(tmp, path)
    return params


def _ops(params):
    """The CNN's two synapse chains as lowering operators (in ANN units)."""
    c = len(params["kernel"])
    conv = lowering.Conv.make(params["kernel"], (1, SIDE, SIDE), stride=1, padding=1, bias=params["b1"])
    pool = lowering.Pool.make((c, SIDE, SIDE), POOL)
    return [conv], [pool, lowering.Flatten(pool.out_shape), lowering.Dense(params["w2"], params["b2"])]


def _dense(params):
    """The dense equivalent: ([W1 (64, C*64), W2 (C*64, 10)], [b1, b2])."""
    first, second = _ops(params)
    w1, b1 = lowering.lower(first, SIDE * SIDE)
    w2, b2 = lowering.lower(second, w1.shape[1])
    return [w1, w2], [b1, b2]


def cnn_graph(params, calibration, percentile=99.9):
    """The normalised spiking CNN as a ``nir.NIRGraph``: IF neurons with threshold 1 and reset by
    subtraction (``neurofabric.reset`` metadata), weights scaled by the normalisation factors
    (lambda_l of :func:`normalise_mlp` on `calibration`)."""
    import nir
    weights, biases = _dense(params)
    _, _, lambdas = normalise_mlp(weights, biases, calibration, percentile)
    c = len(params["kernel"])
    side = SIDE // POOL
    conv_shape_ = (c, SIDE, SIDE)
    nodes = {
        "input": nir.Input(np.array([1, SIDE, SIDE])),
        "conv": nir.Conv2d(input_shape=(SIDE, SIDE), weight=params["kernel"] / lambdas[0], stride=1, padding=1,
                           dilation=1, groups=1, bias=params["b1"] / lambdas[0]),
        "conv_if": nir.IF(r=np.ones(conv_shape_), v_threshold=np.ones(conv_shape_), v_reset=np.zeros(conv_shape_)),
        "pool": nir.SumPool2d(kernel_size=np.array([POOL, POOL]), stride=np.array([POOL, POOL]),
                              padding=np.array([0, 0])),
        "flatten": nir.Flatten(input_type={"input": np.array([c, side, side])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=params["w2"] * lambdas[0] / lambdas[1], bias=params["b2"] / lambdas[1]),
        "out_if": nir.IF(r=np.ones(10), v_threshold=np.ones(10), v_reset=np.zeros(10)),
        "output": nir.Output(np.array([10])),
    }
    edges = [("input", "conv"), ("conv", "conv_if"), ("conv_if", "pool"), ("pool", "flatten"), ("flatten", "fc"),
             ("fc", "out_if"), ("out_if", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"neurofabric.reset": "subtract"}, type_check=False)


def build_network(graph):
    """Import the graph; returns (ConvertedMLP view for :func:`classify`, ImportReport)."""
    net, report = from_nir(graph, dt=1.0)
    pops = {p.name: p for p in net.populations}
    layers = (pops["conv_if"], pops["out_if"])
    converted = ConvertedMLP(net, pops["input"], layers, tuple(net.connections),
                             tuple(p.neuron.threshold for p in layers), (), tuple(c.weights for c in net.connections),
                             tuple(p.bias for p in layers))
    return converted, report


def _spikes(result):
    """A run's spikes as sorted (step from the run's start, core, neuron) rows: cores spike in
    parallel, and the order in which one step's spikes of different cores reach the host is not
    part of the semantics."""
    raw = np.array(result.raw, dtype=np.int64).reshape(-1, 3)
    raw[:, 0] -= result.start
    return raw[np.lexsort(raw.T[::-1])]


def memory_figures(report, network):
    """Synaptic memory: the words a shared-weight mapping stores (every kernel and dense weight
    once), the dense crossbar words the chip uses today, and the non-zero synapses."""
    kernel = sum(c["kernel_words"] for c in report.connections.values())
    dense = sum(c["dense_words"] for c in report.connections.values())
    synapses = sum(int(np.count_nonzero(c.weights)) for c in network.connections)
    return {"kernel_words": kernel, "dense_words": dense, "synapses": synapses,
            "dense_over_kernel": dense / kernel if kernel else None}


def run_conv_demo(device="sim", steps=32, channels=8, epochs=150, limit=None, compare=True, progress=None,
                  log=None, seed=0, percentile=None, out_dir=None, device_options=None):
    """Run the whole demo; returns the summary dict (and writes ``summary.json`` and the NIR graph
    ``conv_digits.nir`` into `out_dir` if given). `compare`: on a non-model device, run every
    sample on the bit-exact model too and report the share of samples with identical spikes
    (the same (step, core, neuron) set in every step) and the same prediction."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    options = dict(device_options or {})
    options.setdefault("shape", conv_shape())
    chip = Chip.open(device, **options)       # first, so a missing device fails before training
    reference = None
    try:
        x_train, x_test, y_train, y_test = load_data(seed)
        if limit is not None:
            x_test, y_test = x_test[:limit], y_test[:limit]
        if percentile is None:
            from sklearn.model_selection import train_test_split
            x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=0.25, random_state=seed)
            weights, biases = _dense(train_cnn(x_fit, y_fit, channels, epochs, seed))
            percentile, scores = choose_percentile(weights, biases, x_val, y_val, steps, rate_encode, PERCENTILES)
            log(f"normalisation percentile {percentile} (validation accuracy by percentile: "
                + ", ".join(f"{p}: {a:.3f}" for p, a in scores.items()) + ")")
        params = train_cnn(x_train, y_train, channels, epochs, seed)
        float_acc = float(np.mean(np.argmax(cnn_forward(params, x_test), 1) == y_test))
        graph = cnn_graph(params, x_train, percentile)
        converted, report = build_network(graph)
        log(f"float CNN test accuracy {float_acc:.4f}\n{report.summary()}")
        record = list(converted.layers)
        compiled = chip.load(converted.network, record=record)
        log(compiled.summary())
        if compare and chip.info.build != "model":
            reference = Chip(ModelBackend(options["shape"]))
            reference.load(converted.network, record=record)
        runs = {}

        def keep(target):
            return lambda i, r: runs.setdefault(target, []).append(_spikes(r))

        result = classify(chip, converted, x_test, steps, progress=progress, on_sample=keep("chip"))
        mismatches = []
        if reference is not None:
            expected = classify(reference, converted, x_test, steps, progress=progress, on_sample=keep("model"))
            mismatches = [i for i, (a, b) in enumerate(zip(runs["chip"], runs["model"]))
                          if not np.array_equal(a, b) or result["pred"][i] != expected["pred"][i]]
        build = chip.info.build
    finally:
        chip.close()
        if reference is not None:
            reference.close()
    summary = {
        "device": device, "build": build, "steps": steps, "channels": channels, "samples": int(len(y_test)),
        "percentile": percentile, "float_accuracy": float_acc,
        "accuracy": float(np.mean(result["pred"] == y_test)),
        "accuracy_count_only": float(np.mean(result["pred_count"] == y_test)),
        "model_agreement": None if reference is None else 1.0 - len(mismatches) / max(1, len(y_test)),
        "mismatched_samples": mismatches[:20],
        "weight_exp": report.weight_exp, "thresholds": list(converted.thresholds),
        "memory": memory_figures(report, converted.network),
        "quantisation": [{"connection": f"{r.connection.pre.name}->{r.connection.post.name}", "scale": r.scale,
                          "clipped": r.clipped, "zeroed": r.zeroed, "max_error": r.max_error}
                         for r in compiled.reports],
        "chip_wall_s": result["wall"], "total_wall_s": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        import nir
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        nir.write(out_dir / "conv_digits.nir", graph)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
