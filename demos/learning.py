"""The learning demo: unsupervised STDP on the chip, Diehl & Cook (2015) style, on scikit-learn's
8x8 digits (``neurofabric demo --learn``; docs/learning.md).

The network (two cores: the plastic excitatory core and the inhibitory pool's core):

- ``pixels``: 128 input channels, each pixel (intensity x) and its inverse 1 - x (ON and OFF
  channels; ``channels="on"`` keeps only the 64 ON channels), Bernoulli rate code with
  probability ``x * max_rate`` per step;
- ``excitatory``: `neurons` LIF neurons with a negative `bias` (only drive above the average
  makes them fire) and an adaptive threshold (``theta_plus`` per spike, decaying by ``dtheta``
  per step: homeostasis);
- ``pixels -> excitatory``: plastic, trace-based pair STDP with stochastic rounding on the
  chip, int8 weights in ``[0, w_max]``, initialised from randomly chosen training images
  (``init="samples"``; labels unused) or uniformly (``init="uniform"``);
- ``excitatory -> inhibitory -> excitatory``: lateral inhibition through a pool of `pool`
  inhibitory neurons. Each of them fires in the step after any excitatory spike and inhibits
  every excitatory neuron by ``127 << weight_exp``; so an excitatory spike pulls every
  excitatory membrane down by ``pool * 127`` weight units two steps later: a winner-take-all
  whose strength is not bounded by one int8 weight (which must stay small next to the
  threshold to leave the plastic weights their resolution).

Training (on the chip, through :class:`~neurofabric.host.chip.Chip`): for each training image,
run ``learn_after`` steps with learning off (the first, synchronous volley of spikes does not
learn), then the remaining ``steps - learn_after`` steps with learning on; then rest: u, v,
refractory counters and STDP traces are zeroed (:meth:`Chip.reset_state`), the adaptive
thresholds are kept (read before and written back after: they carry the homeostasis from image
to image). Every ``normalise_every`` images the host reads the plastic weights back and rescales
every neuron's incoming weights to sum to ``weight_total`` (Diehl & Cook normalise too; pair STDP
only changes weights of active inputs, so without it the weights of active inputs only grow).

Evaluation: learning off (:meth:`Chip.set_learning`), thresholds frozen at their trained values
(written back before every image); each neuron is labelled with the class it responds to most
on the training set (mean spike count per class), and a test image is classified as the class
whose labelled neurons spike most on average.

Saves ``receptive_fields.png``, ``weights.npz`` and ``summary.json`` into `out_dir`; progress
goes to stderr. Chip time: about ``steps`` model steps per image, 1257 training + 1797
labelling/test images by default."""

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from neurofabric.hdl.protocol import STATE_BITS, CoreRegister, MemorySpace, ProfileField, StateField
from neurofabric.host.chip import Chip, Progress
from neurofabric.host.compiler import STATE_WORDS
from neurofabric.host.encoding import bernoulli_encode
from neurofabric.host.network import LIF, STDP, Network, ValidationError

__all__ = ["LearnConfig", "QUICK", "RANDOM", "RANDOM_QUICK", "default_config", "sweep_run", "build_network", "encode", "run_learn_demo", "format_learn_summary",
           "assign_labels", "predict", "training_curve"]


@dataclass(frozen=True)
class LearnConfig:
    """Every knob of the learning demo (chip units: weights in int8 steps, decays in 1/4096)."""
    neurons: int = 100              #: excitatory learning neurons
    channels: str = "onoff"         #: "on" (64 pixel channels) or "onoff" (+ 64 inverted channels)
    steps: int = 120                #: time steps per image
    eval_steps: int | None = None   #: time steps per image when labelling and testing (None: `steps`)
    max_rate: float = 0.125         #: spike probability per step of a full-intensity channel
    ramp: int = 0                   #: the input rate rises linearly over the first `ramp` steps
    epochs: int = 1                 #: passes over the training images
    learn_after: int = 30           #: learning is switched on only after this many steps of an image
    train_limit: int | None = None  #: use only the first N training images (None: all 1257)
    label_limit: int | None = None  #: label neurons on the first N training images (None: all)
    test_limit: int | None = None   #: classify only the first N test images (None: all 540)
    threshold: int = 600            #: firing threshold (int8 weight units)
    dv: int = 137                   #: membrane decay per step (137/4096: tau ~ 30 steps)
    du: int = 4096                  #: synaptic current decay per step (4096: input lasts one step)
    refractory: int = 0
    v_reset: int = 0                #: membrane potential after a spike (int8 weight units)
    bias: int = -80                 #: constant input per step (int8 weight units; negative: only
                                    #: inputs well above the average drive make a neuron fire)
    theta_plus: int = 5             #: adaptive threshold increment per spike (int8 weight units)
    dtheta: int = 1                 #: adaptive threshold decay per step (1/4096 units: tau 4096 steps)
    pool: int = 8                   #: inhibitory neurons; an excitatory spike inhibits by pool * 127
    w_max: int = 127                #: upper bound of the plastic weights (int8)
    weight_total: int = 1280        #: sum of each neuron's input weights after normalisation
    normalise_every: int = 4        #: images between host-side weight normalisations (0: never)
    a_plus: int = 1
    a_minus: int = 1
    shift: int = 10                 #: STDP rate: 2**-shift (10: 4x slower than 8, and 2 points better)
    pre_increment: int = 16
    post_increment: int = 16
    tau_pre: float = 30.0
    tau_post: float = 30.0
    weight_exp: int = 8             #: the core's weight exponent (state units = int8 << weight_exp)
    init: str = "samples"           #: initial weights: "samples" (random training images) or "uniform"
    inhibition: str = "pool"        #: "pool": lateral inhibition through the inhibitory pool's routes;
                                    #: "wta": the core's hard k-winner-take-all (model only so far)
    k: int = 1                      #: winners per step ("wta")
    hold: int = 0                   #: steps the losers are held after a win ("wta")
    rest_normalise: bool = False    #: normalise on the chip at every rest (ChipModel.rest) instead of
                                    #: by the host every `normalise_every` images
    rest_dtheta: int = 0            #: adaptive threshold decay at every rest (1/4096; rest_normalise only)
    eval_theta: str = "trained"     #: adaptive thresholds when labelling and testing: "trained" (frozen
                                    #: where training left them) or "none" (0: a plain prototype match)
    seed: int = 0

    def __post_init__(self):
        if self.channels not in ("on", "onoff"):
            raise ValidationError(f"channels must be 'on' or 'onoff', not {self.channels!r}", "channels",
                                  self.channels, ("on", "onoff"))
        if self.init not in ("samples", "uniform"):
            raise ValidationError(f"init must be 'samples' or 'uniform', not {self.init!r}", "init", self.init,
                                  ("samples", "uniform"))
        if self.eval_theta not in ("trained", "none"):
            raise ValidationError(f"eval_theta must be 'trained' or 'none', not {self.eval_theta!r}", "eval_theta",
                                  self.eval_theta, ("trained", "none"))
        if self.inhibition not in ("pool", "wta"):
            raise ValidationError(f"inhibition must be 'pool' or 'wta', not {self.inhibition!r}", "inhibition",
                                  self.inhibition, ("pool", "wta"))
        if not 0 < self.max_rate <= 1:
            raise ValidationError(f"max_rate = {self.max_rate} is out of range: allowed (0, 1]", "max_rate",
                                  self.max_rate, (0, 1))
        for name, lo, hi in (("neurons", 2, 1 << 16), ("steps", 1, 1 << 16), ("learn_after", 0, self.steps - 1),
                             ("epochs", 1, 1000),
                             ("pool", 1, 1 << 10), ("w_max", 1, 127), ("weight_exp", 0, 15),
                             ("normalise_every", 0, 1 << 20), ("weight_total", 1, 1 << 20), ("k", 1, 15),
                             ("hold", 0, 255), ("eval_steps", 1, 1 << 16), ("rest_dtheta", 0, 4096)):
            value = getattr(self, name)
            if name == "eval_steps" and value is None:
                continue
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValidationError(f"{name} = {value!r} is out of range: allowed [{lo}, {hi}]", name, value,
                                      (lo, hi))

    @property
    def inputs(self):
        return 64 if self.channels == "on" else 128


#: a small configuration for tests and smoke runs (about 20 s on the model): 20 neurons, the
#: first 200 training images to train and label, 100 test images, and the 4x faster STDP rate
#: (shift 8) that a sixth of the training set needs to move the weights
QUICK = LearnConfig(neurons=20, train_limit=200, label_limit=200, test_limit=100, shift=8)

#: learning from uniform random weights (docs/learning.md, "From random weights"): the core's hard
#: winner-take-all instead of the pool, potentiation only (normalisation is the depression),
#: normalisation and threshold decay (2/4096 per image, none per step) in the chip's rest command
#: between images, a threshold of about 6 steps of a well-matched input, labelling and testing
#: on longer presentations without the adaptive thresholds (model device only until the
#: gateware has the winner-take-all)
RANDOM = LearnConfig(init="uniform", inhibition="wta", k=1, rest_normalise=True, learn_after=0, bias=0, steps=40,
                     eval_steps=100, eval_theta="none", max_rate=0.25, threshold=3200, dv=205, theta_plus=160,
                     dtheta=0, rest_dtheta=2, a_plus=1, a_minus=0, shift=4, pre_increment=16, post_increment=16, tau_pre=10.0,
                     tau_post=10.0, weight_total=3200, epochs=3)
#: :data:`RANDOM` small enough for the test suite: 20 neurons, 200 training images, 100 test images
RANDOM_QUICK = replace(RANDOM, neurons=20, train_limit=200, label_limit=200, test_limit=100, epochs=1, eval_steps=40)


def build_network(cfg, rng, samples=None):
    """The network of the module docstring: (network, input population, excitatory population,
    plastic connection). Initial weights: uniform in ``[0, w_max/2]``, or, if `samples` (images,
    64) is given, one randomly chosen image per neuron (its channel intensities) plus 10 %
    uniform noise; then normalised."""
    scale = 1 << cfg.weight_exp
    net = Network()
    pixels = net.input(cfg.inputs, name="pixels")
    neuron = LIF(threshold=cfg.threshold * scale, dv=cfg.dv, du=cfg.du, refractory=cfg.refractory,
                 v_reset=cfg.v_reset * scale, theta_plus=cfg.theta_plus * scale, dtheta=cfg.dtheta)
    exc = net.population(cfg.neurons, neuron, bias=cfg.bias * scale, name="excitatory")
    w0 = rng.uniform(0, cfg.w_max / 2, (cfg.inputs, cfg.neurons))
    if samples is not None:
        chosen = rng.choice(len(samples), cfg.neurons, replace=len(samples) < cfg.neurons)
        picks = np.asarray(samples, dtype=np.float64)[chosen]
        if cfg.channels == "onoff":
            picks = np.concatenate([picks, 1.0 - picks], axis=1)
        w0 = picks.T * cfg.w_max + 0.2 * w0
    w0 = _normalised(np.round(w0).astype(np.int64), cfg, rng)
    stdp = STDP(a_plus=cfg.a_plus, a_minus=cfg.a_minus, shift=cfg.shift, pre_increment=cfg.pre_increment,
                post_increment=cfg.post_increment, tau_pre=cfg.tau_pre, tau_post=cfg.tau_post,
                w_min=0, w_max=cfg.w_max, seed=(cfg.seed * 7919 + 1) & 0xFFFF or 1)
    plastic = net.connect(pixels, exc, weights=w0 * scale, plastic=stdp)
    if cfg.inhibition == "pool":
        # the inhibitory pool: v is this step's input only (dv = 4096), so every pool neuron
        # fires in the step after any excitatory spike, and each inhibits every excitatory neuron
        pool = net.population(cfg.pool, LIF(threshold=1, dv=4096), name="inhibitory")
        net.connect(exc, pool, weights=1)
        # -127 << weight_exp fixes the excitatory core's exponent at weight_exp, so the plastic
        # weights are stored exactly (whole int8 steps)
        net.connect(pool, exc, weights=-127 * scale)
    return net, pixels, exc, plastic


def _normalised(w, cfg, rng):
    """Scale each column of int8 weights `w` to sum to ``weight_total`` (rounded to nearest, so
    a column already at the total is unchanged; clipped to [0, w_max])."""
    w = np.asarray(w, dtype=np.float64)
    sums = w.sum(axis=0, keepdims=True)
    target = np.where(sums > 0, w * (cfg.weight_total / np.maximum(sums, 1e-12)), cfg.weight_total / len(w))
    return np.clip(np.round(target), 0, cfg.w_max).astype(np.int64)


def encode(x, cfg, seed, steps=None):
    """Input raster (steps, channels) for one image `x` (64 intensities in [0, 1]); `steps`
    defaults to ``cfg.steps``."""
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    x = np.asarray(x, dtype=np.float64)
    if cfg.channels == "onoff":
        x = np.concatenate([x, 1.0 - x])
    if not cfg.ramp:
        return bernoulli_encode(x * cfg.max_rate, cfg.steps, seed=seed)
    # a rising rate: the best-matching neuron crosses its threshold alone, before the others
    gain = np.minimum(1.0, (np.arange(cfg.steps) + 1) / cfg.ramp)[:, None]
    return np.random.default_rng(seed).random((cfg.steps, len(x))) < gain * (x * cfg.max_rate)[None, :]


def _seed16(seed):
    """A 16-bit LFSR seed for the chip's encoder from the demo's per-image seed."""
    return (seed * 0x9E3779B1 >> 16) & 0xFFFF


def present(chip, pixels, x, cfg, seed, steps=None):
    """Start presenting image `x`: into the chip's Bernoulli input encoder when it has enough
    channels and the rate does not ramp (the image is loaded once, the chip draws its spikes:
    ``Chip.encode``), else as a host raster (:func:`encode`). Returns ``run(start, stop)``, which
    runs those steps of the image (call after :meth:`Chip.reset_state`, which rewinds the encoder)."""
    xs = np.asarray(x, dtype=np.float64)
    if cfg.channels == "onoff":
        xs = np.concatenate([xs, 1.0 - xs])
    if not cfg.ramp and chip.info.encoder_channels >= cfg.inputs:
        chip.encode({pixels: xs * cfg.max_rate}, mode="bernoulli", seed=_seed16(seed))
        return lambda start, stop: chip.run(steps=stop - start)
    raster = encode(x, cfg, seed, steps)
    return lambda start, stop: chip.run({pixels: raster[start:stop]}, steps=stop - start)


class _PlasticCore:
    """Host-side access to the plastic projection and the learning neurons' thresholds, through
    the chip's memory map (works on every backend)."""

    def __init__(self, chip, compiled, connection, exc):
        (self.slice,) = compiled.slices_of(exc)
        self.chip, self.connection, self.exc = chip, connection, exc
        self.base = compiled.axon_blocks[(self.slice.core, connection.pre)]
        self.neurons = chip.info.neurons

    def weights(self):
        return self.chip.read_weights(self.connection, raw=True)

    def configure_model(self, cfg, plastic):
        """The learning core's winner-take-all, its normalisation at rest and its exact weights,
        which are Python-level configuration of the bit-exact model until the address map
        declares them (docs/semantics.md, "Winner-take-all"): the model device only."""
        from neurofabric.host.model import WtaConfig
        model = getattr(self.chip.backend, "model", None)
        if model is None:
            raise ValidationError(
                f"inhibition='wta' and rest_normalise need the model device (--device model): the "
                f"winner-take-all and the rest command are not in the {self.chip.info.build!r} build yet",
                "device", self.chip.info.build, ("model",))
        s = self.slice
        members = np.zeros(self.neurons, dtype=bool)
        members[s.offset:s.offset + s.stop - s.start] = True
        if cfg.inhibition == "wta":
            # the plastic projection is the core's only input: store it at the configured
            # exponent whatever the compiler chose for the initial weights' peak
            w0 = np.round(plastic.weights / (1 << cfg.weight_exp)).astype(np.int64)
            model.write_words(MemorySpace.CORE, s.core, CoreRegister.WEIGHT_EXP.value, [cfg.weight_exp])
            self.write_weights(w0)
            model.set_wta(s.core, WtaConfig(k=cfg.k, reset=True, hold=cfg.hold), members)
        if cfg.rest_normalise:
            model.set_rest(s.core, cfg.weight_total, cfg.rest_dtheta, members)
        self.model = model

    def freeze(self, clear_theta=False):
        """For evaluation: no normalisation at rest, and the learning neurons' adaptive
        thresholds fixed where training left them, or at 0 (`clear_theta`): their profile's
        theta_plus and dtheta to 0."""
        s = self.slice
        if clear_theta:
            self.rest(np.zeros(s.stop - s.start, dtype=np.int64))
        self.model.set_rest(s.core, 0, 0)
        profile = int(self.chip.backend.read(MemorySpace.NEURON, s.core, s.offset, 1)[0]) >> STATE_BITS
        for field_ in (ProfileField.THETA_PLUS, ProfileField.DTHETA):
            self.chip.backend.write(MemorySpace.PROFILE, s.core, profile * 8 + field_.value, [0])

    def write_weights(self, w):
        """Write the int8 weights of the plastic projection (the other neurons' columns of the
        same axon rows are read back and kept)."""
        s, N, pre = self.slice, self.neurons, self.connection.pre.size
        rows = self.chip.backend.read(MemorySpace.WEIGHT, s.core, self.base * N, pre * N).reshape(pre, N)
        rows[:, s.offset:s.offset + s.stop - s.start] = w
        self.chip.backend.write(MemorySpace.WEIGHT, s.core, self.base * N, rows.ravel())

    def theta(self):
        return self.chip.read_state(self.exc)["theta"]

    def rest(self, theta):
        """Return to rest between images, keeping the adaptive thresholds `theta`."""
        self.chip.reset_state()
        s = self.slice
        words = np.zeros((s.stop - s.start, STATE_WORDS), dtype=np.int64)
        words[:, StateField.THETA.value] = theta
        self.chip.backend.write(MemorySpace.STATE, s.core, s.offset * STATE_WORDS, words.ravel())


def learn_shape(cfg):
    """The chip shape the demo asks for: two cores (the plastic excitatory core, the pool's
    core), each with room for the neurons and the axons it needs, and an input encoder channel
    per input (the pixels feed one core)."""
    from neurofabric.host.model import ChipShape
    neurons = max(8, -(-max(cfg.neurons, cfg.pool) // 8) * 8)
    return ChipShape(cores=2 if cfg.inhibition == "pool" else 1, neurons=neurons, axons=max(cfg.inputs + cfg.pool, cfg.neurons),
                     lanes=8, route_entries=max(512, 2 * (cfg.neurons + cfg.pool)),
                     encoder_channels=cfg.inputs)


def assign_labels(counts, y, classes=10):
    """Each neuron's class: the class with the highest mean response (spike count) over the
    images of that class. Neurons that never fired get label -1."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = np.stack([counts[y == c].mean(axis=0) if np.any(y == c) else np.zeros(counts.shape[1])
                     for c in range(classes)])
    labels = np.argmax(mean, axis=0)
    labels[counts.sum(axis=0) == 0] = -1
    return labels


def predict(counts, labels, classes=10):
    """Class per image: the highest mean spike count of the neurons labelled with each class
    (classes without neurons score -1; ties go to the lowest class)."""
    counts = np.asarray(counts, dtype=np.float64)
    scores = np.full((len(counts), classes), -1.0)
    for c in range(classes):
        members = labels == c
        if members.any():
            scores[:, c] = counts[:, members].mean(axis=1)
    return np.argmax(scores, axis=1)


def _respond(chip, core, pixels, exc, x, cfg, theta, seed, bar):
    """Spike counts (images, neurons) with learning off and thresholds fixed at `theta`."""
    counts = np.zeros((len(x), cfg.neurons), dtype=np.int64)
    for i in range(len(x)):
        if cfg.rest_normalise:
            core.model.rest()               # the thresholds are frozen (_PlasticCore.freeze)
        else:
            core.rest(theta)
        steps = cfg.eval_steps or cfg.steps
        result = present(chip, pixels, x[i], cfg, seed + i, steps)(0, steps)
        counts[i] = result.counts(exc)
        bar.update(1)
    return counts


def training_curve(counts, y, block=100, window=400):
    """Accuracy as training proceeds, from the responses recorded while learning: each block of
    `block` training images is classified with labels assigned from the responses to the
    `window` images before it (:func:`assign_labels`, :func:`predict`). Returns a list of
    (images seen, accuracy) from the first block that has a full window behind it."""
    curve = []
    for start in range(window, len(y) - block + 1, block):
        labels = assign_labels(counts[start - window:start], y[start - window:start])
        pred = predict(counts[start:start + block], labels)
        curve.append((start + block, float(np.mean(pred == y[start:start + block]))))
    return curve


def _plot_curve(path, curve, test_accuracy, off_accuracy=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    if curve:
        ax.plot(*zip(*curve), "o-", label="next training images, labels from the ones before")
    ax.axhline(test_accuracy, color="C1", label=f"test after training: {test_accuracy:.3f}")
    if off_accuracy is not None:
        ax.axhline(off_accuracy, color="0.5", linestyle="--", label=f"learning off: {off_accuracy:.3f}")
    ax.set_xlabel("training images seen")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_fields(path, w, labels, cfg, title="learned receptive fields (title: assigned class)"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = w[:64].astype(np.float64)
    if cfg.channels == "onoff":
        fields = fields - w[64:128]
    cols = int(np.ceil(np.sqrt(cfg.neurons)))
    rows = int(np.ceil(cfg.neurons / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.95))
    for k, ax in enumerate(np.ravel(axes)):
        ax.set_axis_off()
        if k < cfg.neurons:
            ax.imshow(fields[:, k].reshape(8, 8), cmap="gray_r" if cfg.channels == "on" else "RdBu_r",
                      interpolation="nearest")
            ax.set_title(str(labels[k]) if labels[k] >= 0 else "-", fontsize=7, pad=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_learn_demo(device="model", out_dir="build/learn_demo", config=None, quick=False, progress=None,
                   log=None, device_options=None):
    """Train, label and test on `device`; returns the summary dict (also ``summary.json``).
    `config`: a :class:`LearnConfig`; by default :func:`default_config` of the device."""
    from neurofabric.demos.digits import load_data

    cfg = config if config is not None else default_config(device, quick)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    options = dict(device_options or {})
    options.setdefault("shape", learn_shape(cfg))
    chip = Chip.open(device, **options)
    try:
        x_train, x_test, y_train, y_test = load_data(0)
        x_fit = x_train if cfg.train_limit is None else x_train[:cfg.train_limit]
        y_fit = y_train if cfg.train_limit is None else y_train[:cfg.train_limit]
        x_label = x_train if cfg.label_limit is None else x_train[:cfg.label_limit]
        y_label = y_train if cfg.label_limit is None else y_train[:cfg.label_limit]
        if cfg.test_limit is not None:
            x_test, y_test = x_test[:cfg.test_limit], y_test[:cfg.test_limit]

        net, pixels, exc, plastic = build_network(cfg, rng, x_fit if cfg.init == "samples" else None)
        compiled = chip.load(net, record=[exc])
        log(compiled.summary())
        core = _PlasticCore(chip, compiled, plastic, exc)
        if cfg.inhibition == "wta" or cfg.rest_normalise:
            core.configure_model(cfg, plastic)
        w_initial = core.weights()
        theta = np.zeros(cfg.neurons, dtype=np.int64)

        # --- training: STDP on the chip ------------------------------------------------------
        t_train = time.perf_counter()
        chip.set_learning(True)
        train_spikes, normalisations, silent, checked = 0, 0, 0, False
        total = cfg.epochs * len(x_fit)
        train_counts = np.zeros((total, cfg.neurons), dtype=np.int64)
        train_labels = np.zeros(total, dtype=np.int64)
        with Progress(total, f"train ({chip.info.build})", progress) as bar:
            for epoch in range(cfg.epochs):
                order = rng.permutation(len(x_fit))
                for k, i in enumerate(order):
                    if cfg.rest_normalise:
                        core.model.rest()           # one command: rest, then normalise on the chip
                    else:
                        core.rest(theta)
                    run = present(chip, pixels, x_fit[i], cfg, 1_000_000 * (epoch + 1) + int(i))
                    counts = np.zeros(cfg.neurons, dtype=np.int64)
                    if cfg.learn_after:
                        chip.set_learning(False)
                        counts += run(0, cfg.learn_after).counts(exc)
                        chip.set_learning(True)
                    learning = run(cfg.learn_after, cfg.steps).counts(exc)
                    counts += learning
                    n_spikes = int(counts.sum())
                    step_index = epoch * len(x_fit) + k
                    train_counts[step_index], train_labels[step_index] = counts, y_fit[i]
                    if not checked and learning.sum() and normalisations == 0 and cfg.a_plus:
                        # the first image with spikes while learning: the device must have
                        # changed weights (else it has no learning; the host's normalisation
                        # would hide that later)
                        if np.array_equal(core.weights(), w_initial):
                            raise ValidationError(
                                f"the device {device!r} changed no plastic weight while its neurons spiked "
                                "with learning on: it does not implement on-chip learning", "device", device)
                        checked = True
                    train_spikes += n_spikes
                    silent += n_spikes == 0
                    if not cfg.rest_normalise:
                        theta = core.theta()
                        if cfg.normalise_every and (k + 1) % cfg.normalise_every == 0:
                            core.write_weights(_normalised(core.weights(), cfg, rng))
                            normalisations += 1
                    else:
                        normalisations += 1
                    bar.update(1)
        if cfg.rest_normalise:
            core.model.rest()
            theta = core.theta()
        t_train = time.perf_counter() - t_train
        w_learned = core.weights()
        changed = int(np.count_nonzero(w_learned != w_initial))
        log(f"training: {total} images, {train_spikes} spikes ({silent} silent images), "
            f"{changed} of {w_learned.size} weights changed, {normalisations} normalisations, {t_train:.1f} s")

        # --- labelling and testing: learning off, thresholds frozen ------------------------
        chip.set_learning(False)
        if cfg.rest_normalise:
            core.freeze(clear_theta=cfg.eval_theta == "none")
        t_eval = time.perf_counter()
        with Progress(len(x_label) + len(x_test), f"label+test ({chip.info.build})", progress) as bar:
            label_counts = _respond(chip, core, pixels, exc, x_label, cfg, theta, 2_000_000, bar)
            test_counts = _respond(chip, core, pixels, exc, x_test, cfg, theta, 3_000_000, bar)
        t_eval = time.perf_counter() - t_eval
        build = chip.info.build
        stats = chip.stats()
    finally:
        chip.close()

    labels = assign_labels(label_counts, y_label)
    pred = predict(test_counts, labels)
    accuracy = float(np.mean(pred == y_test))
    train_accuracy = float(np.mean(predict(label_counts, labels) == y_label))
    _plot_fields(out_dir / "receptive_fields.png", w_learned, labels, cfg)
    _plot_fields(out_dir / "receptive_fields_initial.png", w_initial, np.full(cfg.neurons, -1), cfg,
                 "initial receptive fields")
    curve = training_curve(train_counts, train_labels, block=max(10, total // 20), window=min(400, total // 2))
    _plot_curve(out_dir / "training_accuracy.png", curve, accuracy)
    fields = w_learned.astype(np.float64)
    corr = np.corrcoef(fields.T) if cfg.neurons > 1 else np.ones((1, 1))
    off_diagonal = corr[~np.eye(cfg.neurons, dtype=bool)]
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (y_test, pred), 1)
    summary = {
        "device": device, "build": build, "config": asdict(cfg),
        "train_images": int(total), "label_images": int(len(y_label)), "test_images": int(len(y_test)),
        "accuracy": accuracy, "train_accuracy": train_accuracy,
        "neurons_per_class": np.bincount(labels[labels >= 0], minlength=10).tolist(),
        "silent_neurons": int(np.sum(labels < 0)),
        "weights_changed": changed, "weights_changed_fraction": changed / w_learned.size,
        "mean_field_correlation": float(np.nanmean(off_diagonal)),
        "normalisations": normalisations, "silent_training_images": int(silent),
        "test_spikes_per_image": float(test_counts.sum(axis=1).mean()),
        "test_active_neurons_per_image": float((test_counts > 0).sum(axis=1).mean()),
        "theta_mean": float(theta.mean()), "theta_max": int(theta.max()),
        "train_wall_s": t_train, "eval_wall_s": t_eval, "total_wall_s": time.perf_counter() - t_start,
        "counters": stats, "confusion": matrix.tolist(), "training_curve": curve,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    np.savez(out_dir / "weights.npz", initial=w_initial, learned=w_learned, labels=labels, theta=theta)
    return summary


def format_learn_summary(s):
    c = s["config"]
    return "\n".join([
        f"device {s['device']} ({s['build']}): STDP + winner-take-all, {c['neurons']} learning neurons, "
        f"{c['steps']} steps per image, {c['epochs']} epoch(s) over {s['train_images'] // c['epochs']} images",
        f"test accuracy {s['accuracy']:.4f} on {s['test_images']} images "
        f"(training-set accuracy {s['train_accuracy']:.4f}); neurons per class {s['neurons_per_class']}",
        f"{s['weights_changed_fraction']:.1%} of the plastic weights changed; "
        f"train {s['train_wall_s']:.1f} s, label+test {s['eval_wall_s']:.1f} s, total {s['total_wall_s']:.1f} s",
    ])


def quick_config(**changes):
    """:data:`QUICK` with some fields changed."""
    return replace(QUICK, **changes)


def default_config(device, quick=False):
    """The demo's configuration on `device`: from uniform random weights with the core's
    winner-take-all (:data:`RANDOM`, :data:`RANDOM_QUICK`) on the model, which has it; from
    exemplar weights with the inhibitory pool (``LearnConfig()``, :data:`QUICK`) on the sim
    device and boards, whose gateware does not have the winner-take-all yet."""
    if device == "model":
        return RANDOM_QUICK if quick else RANDOM
    return QUICK if quick else LearnConfig()


def sweep_run(seed=0, config="random", learning=True, **changes):
    """One seeded run for :func:`neurofabric.host.sweep.sweep` on the model: `config` names the
    base (``"random"``: :data:`RANDOM`, ``"random_quick"``: :data:`RANDOM_QUICK`, ``"exemplar"``:
    ``LearnConfig()``), `changes` override its fields, ``learning=False`` sets ``a_plus =
    a_minus = 0`` (the same network and initial weights, no STDP). Returns the figures of the
    summary (no files are kept)."""
    import tempfile
    bases = {"random": RANDOM, "random_quick": RANDOM_QUICK, "exemplar": LearnConfig()}
    if config not in bases:
        raise ValidationError(f"config must be one of {sorted(bases)}, not {config!r}", "config", config,
                              tuple(sorted(bases)))
    cfg = replace(bases[config], seed=seed, **changes)
    if not learning:
        cfg = replace(cfg, a_plus=0, a_minus=0)
    with tempfile.TemporaryDirectory() as tmp:
        s = run_learn_demo(device="model", out_dir=tmp, config=cfg, progress=False, log=lambda m: None)
    keys = ("accuracy", "train_accuracy", "silent_neurons", "test_spikes_per_image", "test_active_neurons_per_image",
            "weights_changed_fraction", "mean_field_correlation", "theta_mean", "train_wall_s", "eval_wall_s",
            "training_curve", "neurons_per_class")
    return {k: s[k] for k in keys}
