"""Describing a spiking network: populations, neuron and learning configurations, connections.

Everything here is hardware-independent and validated when it is built, before anything is
sent to a chip. The units are the chip's own (docs/host.md, "Units"):

- membrane potential, threshold, bias and weights are in *state units*, the integers the chip's
  24-bit ``u``/``v`` registers hold; weights may be floats (the compiler quantises them to int8
  times a per-core power of two and reports what that did);
- decays are either given as time constants in time steps (``tau_mem``, ``tau_syn``,
  ``tau_theta``; the decay per step is ``round(4096 / tau)``) or as raw 12-bit fractions
  (``dv``, ``du``, ``dtheta``; 0 = no decay, 4096 = full decay every step).

Example::

    net = Network()
    inp = net.input(64)
    hid = net.population(128, LIF(threshold=1000, tau_mem=20))
    net.connect(inp, hid, weights=W)           # W: (64, 128) array, state units
"""

import math
from dataclasses import dataclass, field

import numpy as np

from neurofabric.hdl.protocol import (
    DECAY_ONE,
    REFRACTORY_BITS,
    STATE_BITS,
    STDP_SHIFT_MAX,
    TRACE_BITS,
    WEIGHT_BITS,
    ResetMode,
    signed_range,
    unsigned_range,
)

__all__ = [
    "ValidationError", "RangeError", "ShapeError", "CapacityError", "EventError",
    "LIF", "IF", "STDP", "Population", "Connection", "Network",
    "decay_from_tau", "tau_from_decay",
]

STATE_MIN, STATE_MAX = signed_range(STATE_BITS)
WEIGHT_MIN, WEIGHT_MAX = signed_range(WEIGHT_BITS)
TRACE_MAX = unsigned_range(TRACE_BITS)[1]


class ValidationError(ValueError):
    """A network, configuration or run argument the chip cannot take. Raised before anything is
    sent; the message names the field, the value and what is allowed."""

    def __init__(self, message, field=None, value=None, allowed=None):
        super().__init__(message)
        self.field, self.value, self.allowed = field, value, allowed


class RangeError(ValidationError):
    """A number outside the range the chip can represent."""


class ShapeError(ValidationError):
    """An array of the wrong shape or dtype."""


class CapacityError(ValidationError):
    """The network does not fit the chip (cores, neurons, axons, profiles, route entries)."""


class EventError(ValidationError):
    """Input events that name a neuron or a time step outside the run."""


def check_int(name, value, lo, hi):
    """Return `value` as int if it is an integer in [lo, hi]; raise RangeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RangeError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}", name, value, (lo, hi))
    if not lo <= int(value) <= hi:
        raise RangeError(f"{name} = {int(value)} is out of range: allowed [{lo}, {hi}]", name, value, (lo, hi))
    return int(value)


def check_number(name, value, lo, hi, lo_open=False):
    """Return `value` as float if it is a number in [lo, hi] (or (lo, hi]); infinite only if `hi`
    is infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RangeError(f"{name} must be a number, not {value!r}", name, value, (lo, hi))
    value = float(value)
    # infinity passes only where the range includes it (hi = inf: "no decay" for time constants)
    bad = math.isnan(value) or (math.isinf(value) and value != hi) or value > hi \
        or (value <= lo if lo_open else value < lo)
    if bad:
        bracket = "(" if lo_open else "["
        raise RangeError(f"{name} = {value} is out of range: allowed {bracket}{lo}, {hi}]", name, value, (lo, hi))
    return value


def decay_from_tau(tau):
    """The 12-bit decay per step for time constant `tau` (in steps): ``round(4096 / tau)``,
    clamped to 0..4096. ``tau = inf`` means no decay."""
    if math.isinf(tau):
        return 0
    return min(DECAY_ONE, max(0, round(DECAY_ONE / tau)))


def tau_from_decay(d):
    """The time constant (in steps) a 12-bit decay `d` realises: ``4096 / d`` (inf for 0)."""
    return math.inf if d == 0 else DECAY_ONE / d


def _decay_field(owner, tau_name, raw_name, default_raw):
    """Resolve a (tau, raw) pair of one LIF field: exactly one may be given."""
    tau, raw = getattr(owner, tau_name), getattr(owner, raw_name)
    if tau is not None and raw is not None:
        raise ValidationError(f"{type(owner).__name__}: give {tau_name} or {raw_name}, not both "
                              f"({tau_name}={tau!r}, {raw_name}={raw!r})", raw_name, raw,
                              (f"{raw_name} alone", f"{tau_name} alone"))
    if tau is not None:
        check_number(tau_name, tau, 0.0, math.inf, lo_open=True)
        if tau < 1:
            raise RangeError(f"{tau_name} = {tau} is out of range: allowed [1, inf] steps "
                             "(a time constant below one step cannot be represented)", tau_name, tau, (1, math.inf))
        return decay_from_tau(tau)
    if raw is None:
        return default_raw
    return check_int(raw_name, raw, 0, DECAY_ONE)


@dataclass(frozen=True)
class LIF:
    """Current-based leaky integrate-and-fire neuron parameters (one chip profile).

    Per step: ``u = u*(1 - du/4096) + input``, ``v = v*(1 - dv/4096) + u + bias``; a spike when
    ``v >= threshold + theta``; then ``v = v_reset`` (``reset="value"``) or ``v -= threshold +
    theta`` (``reset="subtract"``), ``refractory`` steps of hold, ``theta += theta_plus``.

    Decays: give a time constant in steps (``tau_mem``, ``tau_syn``, ``tau_theta``) or the raw
    12-bit fraction (``dv``, ``du``, ``dtheta``), not both. Defaults: ``du = 4096`` (the
    synaptic current lasts one step: a plain LIF), ``dv = 0`` (no leak: IF), ``dtheta = 0``.
    Threshold, v_reset and theta_plus are in state units (24-bit signed).
    """
    threshold: int = 1024
    tau_mem: float | None = None
    tau_syn: float | None = None
    dv: int | None = None
    du: int | None = None
    v_reset: int = 0
    reset: str = "value"
    refractory: int = 0
    theta_plus: int = 0
    tau_theta: float | None = None
    dtheta: int | None = None

    def __post_init__(self):
        check_int("threshold", self.threshold, 0, STATE_MAX)
        check_int("v_reset", self.v_reset, STATE_MIN, STATE_MAX)
        if self.reset not in ("value", "subtract"):
            raise ValidationError(f"reset must be 'value' or 'subtract', not {self.reset!r}",
                                  "reset", self.reset, ("value", "subtract"))
        check_int("refractory", self.refractory, 0, (1 << REFRACTORY_BITS) - 1)
        check_int("theta_plus", self.theta_plus, 0, STATE_MAX)
        # resolve once so a bad combination fails at construction
        self.decays()

    def decays(self):
        """The raw (du, dv, dtheta) the chip uses."""
        return (_decay_field(self, "tau_syn", "du", DECAY_ONE),
                _decay_field(self, "tau_mem", "dv", 0),
                _decay_field(self, "tau_theta", "dtheta", 0))

    def profile(self):
        """The chip profile (:class:`neurofabric.host.model.NeuronProfile`) for these parameters."""
        from neurofabric.host.model import NeuronProfile
        du, dv, dtheta = self.decays()
        return NeuronProfile(
            du=du, dv=dv, threshold=self.threshold, v_reset=self.v_reset,
            reset_mode=ResetMode.SUBTRACT if self.reset == "subtract" else ResetMode.VALUE,
            refractory=self.refractory, theta_plus=self.theta_plus, dtheta=dtheta)

    def effective_taus(self):
        """The time constants (steps) the quantised decays realise: (tau_syn, tau_mem, tau_theta)."""
        return tuple(tau_from_decay(d) for d in self.decays())


def IF(threshold=1024, reset="subtract", **kwargs):
    """Integrate-and-fire: a :class:`LIF` without leak (``dv = 0``) and with a one-step
    synaptic current (``du = 4096``); reset by subtraction by default (as ANN conversion wants)."""
    return LIF(threshold=threshold, dv=0, du=DECAY_ONE, reset=reset, **kwargs)


@dataclass(frozen=True)
class STDP:
    """Trace-based pair STDP of a projection (docs/semantics.md, "Learning"). Raw chip units:
    trace increments and amplitudes are 8-bit, decays 12-bit fractions (or ``tau_pre`` /
    ``tau_post`` in steps), ``dw = a * trace * reward >> shift`` with stochastic rounding,
    weights bounded to ``[w_min, w_max]`` (int8 units)."""
    a_plus: int = 16
    a_minus: int = 16
    shift: int = 8
    pre_increment: int = 64
    post_increment: int = 64
    tau_pre: float | None = None
    tau_post: float | None = None
    pre_decay: int | None = None
    post_decay: int | None = None
    w_min: int = WEIGHT_MIN
    w_max: int = WEIGHT_MAX
    seed: int = 1

    def __post_init__(self):
        for name in ("pre_increment", "post_increment", "a_plus", "a_minus"):
            check_int(name, getattr(self, name), 0, TRACE_MAX)
        check_int("shift", self.shift, 0, STDP_SHIFT_MAX)
        check_int("w_min", self.w_min, WEIGHT_MIN, WEIGHT_MAX)
        check_int("w_max", self.w_max, self.w_min, WEIGHT_MAX)
        check_int("seed", self.seed, 0, 0xFFFF)
        self.config()

    def config(self):
        """The chip's :class:`neurofabric.host.model.StdpConfig`."""
        from neurofabric.host.model import StdpConfig
        return StdpConfig(
            pre_increment=self.pre_increment, post_increment=self.post_increment,
            pre_decay=_decay_field(self, "tau_pre", "pre_decay", 512),
            post_decay=_decay_field(self, "tau_post", "post_decay", 512),
            a_plus=self.a_plus, a_minus=self.a_minus, shift=self.shift,
            w_min=self.w_min, w_max=self.w_max, seed=self.seed)


@dataclass(frozen=True, eq=False)
class Population:
    """A group of neurons (or of input channels, when ``neuron`` is None). Created by
    :meth:`Network.input` / :meth:`Network.population`; hashable by identity."""
    size: int
    neuron: LIF | None
    bias: np.ndarray
    name: str
    id: int

    @property
    def is_input(self):
        return self.neuron is None

    def __repr__(self):
        kind = "input" if self.is_input else "population"
        return f"<{kind} {self.name!r} size={self.size}>"


@dataclass(frozen=True, eq=False)
class Connection:
    """A dense projection ``pre -> post`` with ``weights[i, j]`` from pre neuron i to post j
    (state units, float allowed; zeros are absent synapses). ``plastic`` enables STDP."""
    pre: Population
    post: Population
    weights: np.ndarray = field(repr=False)
    plastic: STDP | None
    id: int
    #: None, or the structured operators (:mod:`neurofabric.host.lowering`: convolution, pooling,
    #: ...) whose lowering `weights` is, e.g. for a projection imported from a NIR Conv2d
    structure: tuple | None = None

    def __repr__(self):
        return f"<connection {self.pre.name!r} -> {self.post.name!r}{' plastic' if self.plastic else ''}>"


class Network:
    """A spiking network under construction: inputs, LIF populations and dense connections."""

    def __init__(self):
        self.populations = []
        self.connections = []

    def _name(self, name, prefix):
        if name is None:
            name = f"{prefix}{len(self.populations)}"
        if not isinstance(name, str) or not name:
            raise ValidationError(f"name must be a non-empty string, not {name!r}", "name", name, ("non-empty str",))
        if any(p.name == name for p in self.populations):
            raise ValidationError(f"name {name!r} is already used in this network", "name", name,
                                  ("a name not in " + repr([p.name for p in self.populations]),))
        return name

    def input(self, size, name=None):
        """An input population of `size` channels (events from the host)."""
        size = check_int("size", size, 1, 1 << 20)
        pop = Population(size, None, np.zeros(size, dtype=np.int64), self._name(name, "input"),
                         len(self.populations))
        self.populations.append(pop)
        return pop

    def population(self, size, neuron=None, bias=0, name=None):
        """A population of `size` neurons with parameters `neuron` (default ``LIF()``) and a
        per-neuron `bias` (scalar or array, state units, 24-bit signed integers)."""
        size = check_int("size", size, 1, 1 << 20)
        neuron = LIF() if neuron is None else neuron
        if not isinstance(neuron, LIF):
            raise ValidationError(f"neuron must be a LIF (or IF(...)), not {neuron!r}", "neuron", neuron,
                                  ("LIF", "IF"))
        bias = _check_int_array("bias", np.broadcast_to(np.asarray(bias), (size,)) if np.ndim(bias) == 0
                                else bias, (size,), STATE_MIN, STATE_MAX)
        pop = Population(size, neuron, bias, self._name(name, "pop"), len(self.populations))
        self.populations.append(pop)
        return pop

    def _own(self, pop, what):
        if not isinstance(pop, Population) or pop not in self.populations:
            raise ValidationError(f"{what} must be a population of this network, not {pop!r}", what, pop,
                                      tuple(self.populations))

    def connect(self, pre, post, weights, plastic=None, structure=None):
        """Connect `pre` to `post` with a dense (pre.size, post.size) `weights` array in state
        units (a scalar fills the matrix). `plastic`: an :class:`STDP` to learn on chip.
        `structure`: optional sequence of :mod:`neurofabric.host.lowering` operators (a
        convolution and its kernel, pooling, ...) whose lowering equals `weights`."""
        self._own(pre, "pre")
        self._own(post, "post")
        if post.is_input:
            raise ValidationError(f"post {post!r} is an input: inputs cannot receive connections", "post", post,
                                  tuple(p for p in self.populations if not p.is_input))
        if plastic is not None and not isinstance(plastic, STDP):
            raise ValidationError(f"plastic must be an STDP or None, not {plastic!r}", "plastic", plastic,
                                  ("STDP(...)", None))
        if any(c.pre is pre and c.post is post for c in self.connections):
            raise ValidationError(f"{pre.name!r} -> {post.name!r} is already connected; "
                                  "add the weight matrices into one connection", "pre", pre,
                                  ("one connection per (pre, post) pair",))
        w = np.asarray(weights)
        if w.ndim == 0:
            w = np.full((pre.size, post.size), w)
        if w.shape != (pre.size, post.size):
            raise ShapeError(f"weights has shape {w.shape}, expected (pre.size, post.size) = "
                             f"{(pre.size, post.size)}", "weights", w.shape, (pre.size, post.size))
        if w.dtype.kind not in "iubf":
            raise ShapeError(f"weights must be numeric, got dtype {w.dtype}", "weights", w.dtype, ("integer", "float"))
        w = w.astype(np.float64)
        limit = WEIGHT_MAX * (1 << 15)
        bad = ~(np.abs(w) <= limit)                   # NaN compares false: caught here too
        if np.any(bad):
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise RangeError(f"weights[{at[0]}, {at[1]}] = {w[at]} is out of range: allowed [{-limit}, {limit}] "
                             "(int8 << weight_exp 15)", "weights", float(w[at]), (-limit, limit))
        if structure is not None:
            structure = _check_structure(structure, w)
        conn = Connection(pre, post, w.copy(), plastic, len(self.connections), structure)
        self.connections.append(conn)
        return conn


def _check_structure(structure, weights):
    from neurofabric.host.lowering import lower
    ops = tuple(structure)
    if not ops or not all(hasattr(op, "apply") and hasattr(op, "out_shape") for op in ops):
        raise ValidationError("structure must be a non-empty sequence of neurofabric.host.lowering operators, "
                              f"not {structure!r}", "structure", structure,
                              "a non-empty sequence of lowering operators")
    try:
        matrix, bias = lower(ops, weights.shape[0])
    except ValueError as e:
        raise ShapeError(f"structure does not apply to {weights.shape[0]} inputs: {e}", "structure",
                         weights.shape[0], "operators whose input size is the pre population's") from e
    if matrix.shape != weights.shape or not np.allclose(matrix, weights, rtol=1e-9, atol=1e-9):
        raise ValidationError(f"structure lowers to a {matrix.shape} matrix that differs from weights "
                              f"{weights.shape}: give the operators in state units", "structure", structure,
                              "operators that lower to exactly `weights`")
    if bias is not None:
        raise ValidationError("structure must not carry a bias: put it into the population's bias",
                              "structure", structure, "operators without a bias")
    return ops


def _check_int_array(name, values, shape, lo, hi):
    array = np.asarray(values)
    if array.shape != tuple(shape):
        raise ShapeError(f"{name} has shape {array.shape}, expected {tuple(shape)}", name, array.shape, shape)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if np.any(bad):
            at = int(np.flatnonzero(bad.ravel())[0])
            raise RangeError(f"{name}[{at}] = {array.ravel()[at]}: allowed integers in [{lo}, {hi}]", name,
                             float(array.ravel()[at]), (lo, hi))
    elif array.dtype.kind not in "iub":
        raise ShapeError(f"{name} must be an integer array, got dtype {array.dtype}", name, array.dtype,
                         ("integer", "bool", "float holding integers"))
    array = array.astype(np.int64)
    if array.size and (array.min() < lo or array.max() > hi):
        bad = int(array[(array < lo) | (array > hi)].flat[0])
        raise RangeError(f"{name} contains {bad}, out of range: allowed [{lo}, {hi}]", name, bad, (lo, hi))
    return array.copy()
