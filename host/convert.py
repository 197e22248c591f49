"""ANN -> SNN conversion of a ReLU multilayer perceptron (Diehl et al. 2015; Rueckauer et al. 2017).

A ReLU layer ``a_l = relu(a_{l-1} W_l + b_l)`` becomes a population of integrate-and-fire
neurons whose spike rate approximates ``a_l / lambda_l``:

- data-based normalisation: ``lambda_l`` is the `percentile` of layer l's activations over
  calibration data (lambda_0 = 1: inputs are rates in [0, 1]); weights become
  ``W_l * lambda_{l-1} / lambda_l`` and biases ``b_l / lambda_l``, so a rate of 1 spike/step
  stands for activation lambda_l;
- IF neurons (``dv = 0``, no leak; ``du = 4096``, the synaptic current is this step's input
  only), reset by subtraction so no charge above the threshold is lost;
- chip units: layer l gets threshold ``theta_l`` chosen so that its largest weight is
  ``127 << weight_exp`` (int8 uses its whole range); weights are ``W * theta_l`` and the bias is
  added every step as ``round(b * theta_l)``;
- readout by spike count of the last layer (ties broken by the residual membrane potential,
  i.e. by ``count * theta + v``, which is the layer's total input: see :func:`readout`).

Spikes of layer l reach layer l+1 one step later (the chip routes spikes between steps), so a
network of L layers needs ``T + L - 1`` steps for T input steps.
"""

from dataclasses import dataclass

import numpy as np

from neurofabric.host.network import IF, Network, RangeError, ShapeError, ValidationError, check_int

__all__ = ["ConvertedMLP", "normalise_mlp", "convert_mlp", "simulate_if", "readout", "choose_percentile", "relu_forward"]


def relu_forward(weights, biases, x):
    """Activations of every layer of a ReLU MLP (the last layer too is rectified)."""
    acts = []
    a = np.asarray(x, dtype=np.float64)
    for w, b in zip(weights, biases):
        a = np.maximum(0.0, a @ w + b)
        acts.append(a)
    return acts


def _check_mlp(weights, biases):
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    if not weights:
        raise ValidationError("weights: at least one layer is needed", "weights", weights)
    if biases is None:
        biases = [np.zeros(w.shape[1]) for w in weights]
    biases = [np.asarray(b, dtype=np.float64) for b in biases]
    if len(biases) != len(weights):
        raise ShapeError(f"biases: {len(biases)} given for {len(weights)} layers", "biases", len(biases))
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.ndim != 2 or (i and w.shape[0] != weights[i - 1].shape[1]):
            raise ShapeError(f"weights[{i}] has shape {w.shape}, which does not chain with the previous layer",
                             f"weights[{i}]", w.shape)
        if b.shape != (w.shape[1],):
            raise ShapeError(f"biases[{i}] has shape {b.shape}, expected ({w.shape[1]},)", f"biases[{i}]", b.shape)
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise RangeError(f"layer {i} contains NaN or infinity", f"weights[{i}]", None)
    return weights, biases


def normalise_mlp(weights, biases, calibration, percentile=99.9):
    """Data-based weight normalisation: returns (weights, biases, lambdas) with
    ``lambdas[l]`` the `percentile` of layer l's ReLU activations on `calibration` inputs."""
    weights, biases = _check_mlp(weights, biases)
    if not 0 < percentile <= 100:
        raise RangeError(f"percentile = {percentile} is out of range: allowed (0, 100]", "percentile", percentile)
    acts = relu_forward(weights, biases, calibration)
    lambdas = []
    for a in acts:
        positive = a[a > 0]
        lambdas.append(float(np.percentile(positive, percentile)) if positive.size else 1.0)
    norm_w, norm_b, prev = [], [], 1.0
    for w, b, lam in zip(weights, biases, lambdas):
        norm_w.append(w * prev / lam)
        norm_b.append(b / lam)
        prev = lam
    return norm_w, norm_b, lambdas


@dataclass(frozen=True)
class ConvertedMLP:
    """The spiking network and what conversion chose."""
    network: Network
    input: object                   #: the input population
    layers: tuple                   #: the IF populations, first hidden .. output
    connections: tuple
    thresholds: tuple               #: theta_l in state units
    lambdas: tuple                  #: the normalisation scale of each layer
    weights: tuple                  #: the chip-unit float weights (before int8 quantisation)
    biases: tuple                   #: the chip-unit integer biases

    @property
    def latency(self):
        """Steps from an input spike to the output layer (layers - 1)."""
        return len(self.layers) - 1


def convert_mlp(weights, biases, calibration, percentile=99.9, weight_exp=4, names=None):
    """Convert a ReLU MLP (lists of (in, out) weight matrices and bias vectors; `biases` may be
    None) to an IF network. `calibration`: inputs (rows, in [0, 1]) for the normalisation;
    `weight_exp`: the per-core weight exponent to aim for (thresholds are ``127 << weight_exp``
    divided by the layer's largest normalised weight; a larger exponent gives finer biases)."""
    weight_exp = check_int("weight_exp", weight_exp, 0, 15)
    norm_w, norm_b, lambdas = normalise_mlp(weights, biases, calibration, percentile)
    net = Network()
    inp = net.input(norm_w[0].shape[0], name="input")
    layers, conns, thresholds, chip_w, chip_b = [], [], [], [], []
    prev = inp
    for i, (w, b) in enumerate(zip(norm_w, norm_b)):
        peak = float(np.abs(w).max())
        if peak == 0:
            raise ValidationError(f"layer {i} has only zero weights", f"weights[{i}]", 0)
        theta = int((127 << weight_exp) // peak)
        name = names[i] if names else ("output" if i == len(norm_w) - 1 else f"hidden{i}")
        bias = np.round(b * theta).astype(np.int64)
        pop = net.population(w.shape[1], IF(threshold=theta, reset="subtract"), bias=bias, name=name)
        conns.append(net.connect(prev, pop, weights=w * theta))
        layers.append(pop)
        thresholds.append(theta)
        chip_w.append(w * theta)
        chip_b.append(bias)
        prev = pop
    return ConvertedMLP(net, inp, tuple(layers), tuple(conns), tuple(thresholds), tuple(lambdas),
                        tuple(chip_w), tuple(chip_b))


def simulate_if(weights, biases, thresholds, spikes):
    """Float reference of the converted network: IF neurons, reset by subtraction, one step of
    delay between layers, exactly the chip's timing (but no quantisation or saturation).
    `spikes`: (steps, inputs) raster, or (batch, steps, inputs). Returns (per-layer spike
    rasters of shape (..., steps, size), final membrane potentials (..., size))."""
    spikes = np.asarray(spikes, dtype=np.float64)
    batch_shape, steps = spikes.shape[:-2], spikes.shape[-2]
    v = [np.zeros(batch_shape + (w.shape[1],)) for w in weights]
    rasters = [np.zeros(batch_shape + (steps, w.shape[1]), dtype=np.int64) for w in weights]
    for t in range(steps):
        inputs = [spikes[..., t, :]] + [r[..., t - 1, :].astype(np.float64) if t
                                        else np.zeros(batch_shape + (r.shape[-1],)) for r in rasters[:-1]]
        for layer, (w, b, th) in enumerate(zip(weights, biases, thresholds)):
            v[layer] = v[layer] + inputs[layer] @ w + b
            fired = v[layer] >= th
            v[layer] = np.where(fired, v[layer] - th, v[layer])
            rasters[layer][..., t, :] = fired
    return rasters, v


def choose_percentile(weights, biases, x, labels, steps, encoder, candidates=(99.0, 99.9, 99.99, 100.0),
                      weight_exp=4):
    """Pick the normalisation percentile that classifies (`x`, `labels`) best in the float IF
    simulation at `steps` input steps; use training data, never the test set. Returns
    (best percentile, {percentile: accuracy})."""
    spikes = encoder(x, steps)
    scores = {}
    for p in candidates:
        conv = convert_mlp(weights, biases, x, percentile=p, weight_exp=weight_exp)
        pad = np.zeros(spikes.shape[:-2] + (conv.latency, spikes.shape[-1]), dtype=bool)
        rasters, v = simulate_if(conv.weights, conv.biases, conv.thresholds, np.concatenate([spikes, pad], -2))
        score = readout(rasters[-1].sum(-2), np.floor(v[-1]).astype(np.int64), conv.thresholds[-1])
        scores[p] = float(np.mean(np.argmax(score, -1) == np.asarray(labels)))
    best = max(scores, key=lambda p: (scores[p], p))
    return best, scores


def readout(counts, v, threshold, tie_break=True):
    """Class scores from output spike counts: ``counts`` alone, or (with `tie_break`)
    ``counts * threshold + v``, the total input each output neuron integrated."""
    counts = np.asarray(counts, dtype=np.int64)
    return counts * int(threshold) + np.asarray(v, dtype=np.int64) if tie_break else counts
