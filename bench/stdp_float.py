"""A float reference of Diehl & Cook (2015)-style unsupervised STDP on scikit-learn's 8x8 digits:
the experiment that chose the chip's winner-take-all (docs/learning.md, "Choosing the
winner-take-all").

    python bench/stdp_float.py [--json FILE] [--quick] [--seeds 0 1 2]

One network, two kinds of inhibition:

* ``wta``: a hard k-winner-take-all. In a step in which excitatory neurons reach threshold, only
  the ``k`` with the largest margin (v - threshold - theta) fire; every other neuron is reset to
  0 and held for ``hold`` steps (the rule of docs/semantics.md, "Winner-take-all", in floats).
* ``lateral``: lateral inhibition as routes make it (and as the learning demo used to): every
  neuron that reaches threshold fires, and each spike of step t pulls every other excitatory
  membrane down by ``inhibit`` (in units of the threshold) at step t + 2 (the excitatory ->
  inhibitory -> excitatory loop).

Everything else is shared: 128 ON/OFF input channels (pixel x and 1 - x), Bernoulli spikes with
probability ``x * max_rate`` per step, ``steps`` steps per image; 100 LIF neurons (membrane
decay ``1 / tau``, threshold 1 plus an adaptive theta: ``theta_plus`` per spike, decaying with
time constant ``tau_theta`` steps); pair STDP with traces (``tau_trace``): a post spike adds
``eta * x_pre`` to the neuron's weights, a pre spike subtracts ``eta * ratio * y_post``; weights
in [0, 1]; after every image each neuron's weights are scaled to sum to ``total``, and the
membranes and traces rest at 0. Initial weights uniform random in [0, 1] (then normalised).
Evaluation: learning and homeostasis frozen, each neuron labelled with the class it answers
most on the training images, a test image classified by the class whose neurons answer most.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class FloatConfig:
    inhibition: str = "wta"         #: "wta" (hard k-WTA) or "lateral" (subtractive, 2 steps late)
    neurons: int = 100
    steps: int = 40                 #: time steps per image
    max_rate: float = 0.25          #: spike probability per step of a full-intensity channel
    tau: float = 20.0               #: membrane time constant (steps)
    k: int = 1                      #: winners per step (wta)
    hold: int = 0                   #: steps the losers are held (wta)
    inhibit: float = 1.0            #: inhibition per spike, in thresholds (lateral)
    theta_plus: float = 0.05        #: threshold increment per spike (thresholds)
    tau_theta: float = 2e4          #: adaptive threshold decay time constant (steps)
    eta: float = 0.01               #: STDP rate
    ratio: float = 0.5              #: depression / potentiation amplitude
    tau_trace: float = 10.0         #: STDP trace time constant (steps)
    total: float = 0.2              #: each neuron's weights sum to total * 128 (of 128 channels)
    gain: float = 0.16              #: input scale: one event adds gain * w to v (thresholds)
    epochs: int = 1
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0


def load(cfg):
    from neurofabric.demos.digits import load_data
    x_train, x_test, y_train, y_test = load_data(0)
    if cfg.train_limit:
        x_train, y_train = x_train[:cfg.train_limit], y_train[:cfg.train_limit]
    if cfg.test_limit:
        x_test, y_test = x_test[:cfg.test_limit], y_test[:cfg.test_limit]
    onoff = lambda x: np.concatenate([x, 1.0 - x], axis=1)  # noqa: E731
    return onoff(x_train), onoff(x_test), y_train, y_test


def normalise(w, cfg):
    return w * (cfg.total * len(w) / np.maximum(w.sum(axis=0, keepdims=True), 1e-12))


def present(w, theta, x, cfg, rng, learn):
    """One image: returns (spike counts per neuron, new theta); updates `w` in place if `learn`."""
    n = cfg.neurons
    v = np.zeros(n)
    hold = np.zeros(n, dtype=np.int64)
    pre, post = np.zeros(len(x)), np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    inhibition = [0.0, 0.0]             # spikes of the last two steps (lateral)
    a_v, a_t = np.exp(-1 / cfg.tau), np.exp(-1 / cfg.tau_trace)
    a_theta = np.exp(-1 / cfg.tau_theta) if learn else 1.0
    events = rng.random((cfg.steps, len(x))) < x * cfg.max_rate
    for t in range(cfg.steps):
        s = events[t]
        theta *= a_theta
        active = hold == 0
        v = np.where(active, v * a_v + cfg.gain * (s @ w), v)
        if cfg.inhibition == "lateral":
            v -= cfg.inhibit * inhibition[0]           # the spikes of step t - 2
        hold = np.maximum(hold - 1, 0)
        margin = v - 1.0 - theta
        fired = active & (margin >= 0)
        if cfg.inhibition == "wta" and fired.any():
            candidates = np.flatnonzero(fired)
            winners = candidates[np.argsort(-margin[candidates], kind="stable")[:cfg.k]]
            fired = np.zeros(n, dtype=bool)
            fired[winners] = True
            v[~fired] = 0.0
            hold[~fired] = cfg.hold
        if cfg.inhibition == "lateral":
            inhibition = [inhibition[1], float(fired.sum())]
        v[fired] = 0.0
        counts += fired
        if learn:
            theta[fired] += cfg.theta_plus
            pre *= a_t
            post *= a_t
            if s.any():
                w[s] -= cfg.eta * cfg.ratio * post[None, :]
            pre[s] += 1.0
            if fired.any():
                w[:, fired] += cfg.eta * pre[:, None]
            post[fired] += 1.0
            np.clip(w, 0.0, 1.0, out=w)
    return counts, theta


def run(cfg, progress=False):
    """Train, label and test; returns a summary dict with ``accuracy`` and
    ``learning_off_accuracy`` (the same initial weights, no learning, no homeostasis)."""
    from neurofabric.demos.learning import assign_labels, predict
    x_train, x_test, y_train, y_test = load(cfg)
    rng = np.random.default_rng(cfg.seed)
    w0 = normalise(rng.uniform(0, 1, (x_train.shape[1], cfg.neurons)), cfg)

    def evaluate(w, theta):
        eval_rng = np.random.default_rng(cfg.seed + 1)
        label = np.stack([present(w, theta.copy(), x, cfg, eval_rng, False)[0] for x in x_train])
        test = np.stack([present(w, theta.copy(), x, cfg, eval_rng, False)[0] for x in x_test])
        labels = assign_labels(label, y_train)
        return float(np.mean(predict(test, labels) == y_test)), test

    t0 = time.perf_counter()
    w, theta = w0.copy(), np.zeros(cfg.neurons)
    for _ in range(cfg.epochs):
        for i in rng.permutation(len(x_train)):
            _, theta = present(w, theta, x_train[i], cfg, rng, True)
            w = normalise(w, cfg)
    accuracy, test = evaluate(w, theta)
    off, _ = evaluate(w0, np.zeros(cfg.neurons))
    summary = {"config": asdict(cfg), "accuracy": accuracy, "learning_off_accuracy": off,
               "gain": accuracy - off, "active_neurons_per_test_image": float((test > 0).sum(axis=1).mean()),
               "wall_s": time.perf_counter() - t0}
    if progress:
        print(f"{cfg.inhibition}: accuracy {accuracy:.3f} (learning off {off:.3f}), "
              f"{summary['active_neurons_per_test_image']:.1f} active neurons per test image, "
              f"{summary['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return summary


QUICK = FloatConfig(neurons=20, train_limit=150, test_limit=60, steps=20)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="20 neurons, 150 training and 60 test images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FloatConfig()
    out = {}
    for inhibition in ("wta", "lateral"):
        runs = [run(replace(base, inhibition=inhibition, seed=s), progress=True) for s in args.seeds]
        accuracies = [r["accuracy"] for r in runs]
        out[inhibition] = {"runs": runs, "accuracy_mean": float(np.mean(accuracies)),
                           "accuracy_min": float(np.min(accuracies))}
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
