"""The bit-exact numpy model of the chip: the executable specification.

Everything here is integer arithmetic on int64 arrays, vectorised over neurons. The gateware,
the Verilator simulation and the boards must reproduce it exactly (docs/semantics.md).

Layout of the model mirrors the chip's memories, one set per core:

- ``weights[a, n]``: int8 crossbar, axon ``a`` to neuron ``n``; ``weight_exp`` per core
- ``bias[n]``, ``profile[n]``: per-neuron bias and parameter-profile index
- ``profiles``: up to :data:`PROFILE_COUNT` :class:`NeuronProfile` per core
- state ``u, v, refractory, theta`` per neuron, ``acc`` (this step's input) per neuron
- STDP: ``pre_trace[a]``, ``post_trace[n]``, ``plastic[a]``, :class:`StdpConfig`, one LFSR per lane
- routes: per source neuron a list of :class:`Route` (to a core's axon, or to the host)
- a hard k-winner-take-all per core over a group of its neurons (:class:`WtaConfig`,
  :meth:`ChipModel.set_wta`) and what the :meth:`ChipModel.rest` command does to a core
  (:meth:`ChipModel.set_rest`: weight normalisation, adaptive threshold decay); Python-level
  configuration until the address map declares them
- the input encoder (chips built with ``encoder_channels > 0``): per channel a rate, a phase
  accumulator and a target (core, axon); a chip-wide enable, mode and LFSR

A time step (design.md section 4): (1) integrate every event addressed to this step (spikes
routed from the previous step, the input encoder's spikes, host input); (2) update every neuron; (3) learn; (4) route this
step's spikes (to axons for the next step, and to the host output).
"""

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from neurofabric.hdl.memory_map import MEMORY_MAP, MemoryMapError, TraceField
from neurofabric.hdl.protocol import (
    ACC_BITS,
    DECAY_BITS,
    DECAY_ONE,
    ENCODER_DRAW_BITS,
    ENCODER_LFSR_BITS,
    ENCODER_LFSR_STEPS,
    ENCODER_LFSR_TAPS,
    ENCODER_RATE_ONE,
    LFSR_BITS,
    LFSR_TAPS,
    PROFILE_COUNT,
    REFRACTORY_BITS,
    STATE_BITS,
    STDP_SHIFT_MAX,
    TRACE_BITS,
    WEIGHT_BITS,
    WEIGHT_EXP_MAX,
    ChipRegister,
    ChipShape,
    CoreRegister,
    Counter,
    EncoderField,
    EncoderMode,
    MemorySpace,
    ParameterError,
    ProfileField,
    ResetMode,
    RouteKind,
    StateField,
    StdpField,
    signed_range,
    unsigned_range,
)
from neurofabric.host.memory_map import check_access, check_write

__all__ = [
    "ChipShape", "NeuronProfile", "StdpConfig", "WtaConfig", "Route", "ChipModel", "ModelError", "ModelMemoryError",
    "saturate", "decay", "lfsr_next", "lfsr_seed", "lfsr_draws", "encoder_lfsr_seed", "encoder_draws",
    "encoder_spikes", "stdp_window",
]

STATE_MIN, STATE_MAX = signed_range(STATE_BITS)
ACC_MIN, ACC_MAX = signed_range(ACC_BITS)
WEIGHT_MIN, WEIGHT_MAX = signed_range(WEIGHT_BITS)
TRACE_MAX = unsigned_range(TRACE_BITS)[1]
ROUTE_COUNT_MAX = 255
#: events per core per step below which |acc| cannot reach the 24-bit bound (65535 * 128 < 2**23)
SATURATION_FREE_EVENTS = ACC_MAX // -WEIGHT_MIN
WORD_MASK = (1 << 32) - 1
_NO_EVENTS = np.zeros((0, 2), dtype=np.int64)
_NO_SPIKES = np.zeros((0, 3), dtype=np.int64)
_STEPS, _INPUT_EVENTS, _ROUTED_EVENTS, _SPIKES, _HOST_SPIKES = (
    c.value for c in (Counter.STEPS, Counter.INPUT_EVENTS, Counter.ROUTED_EVENTS, Counter.SPIKES,
                      Counter.HOST_SPIKES))


class ModelError(ParameterError):
    """A parameter or command the chip would reject: names the field, value and allowed range."""


class ModelMemoryError(ModelError, MemoryMapError):
    """A memory access the memory map refuses (``neurofabric.hdl.memory_map``): both a
    :class:`ModelError` and the :class:`MemoryMapError` every backend raises for it."""


def check_int(name, value, lo, hi):
    """Validate an integer field; raise :class:`ModelError` naming field, value and range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ModelError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}",
                         field=name, value=value, allowed=(lo, hi))
    if not lo <= int(value) <= hi:
        raise ModelError(f"{name} = {int(value)} is out of range: allowed [{lo}, {hi}]",
                         field=name, value=int(value), allowed=(lo, hi))
    return int(value)


def check_array(name, values, shape, lo, hi):
    """Validate an integer array's shape, dtype and range; return it as int64."""
    array = np.asarray(values)
    if array.shape != tuple(shape):
        raise ModelError(f"{name} has shape {array.shape}, expected {tuple(shape)}")
    if array.dtype.kind not in "iub":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ModelError(f"{name} contains NaN or infinity; expected integers in [{lo}, {hi}]")
        if array.dtype.kind != "f" or not np.all(array == np.round(array)):
            raise ModelError(f"{name} must hold integers in [{lo}, {hi}], got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < lo or array.max() > hi):
        bad = array[(array < lo) | (array > hi)].flat[0]
        raise ModelError(f"{name} contains {int(bad)}, out of range: allowed [{lo}, {hi}]")
    return array


def saturate(x, bits):
    """Clamp to a `bits`-wide signed range (numpy or int)."""
    lo, hi = signed_range(bits)
    return np.clip(x, lo, hi)


def decay(x, d):
    """``x * (4096 - d) / 4096`` rounded toward zero (symmetric for negative values)."""
    x = np.asarray(x, dtype=np.int64)
    magnitude = (np.abs(x) * (DECAY_ONE - np.asarray(d, dtype=np.int64))) >> DECAY_BITS
    return np.where(x < 0, -magnitude, magnitude)


def _sat(x):
    """:func:`saturate` to the 24-bit state range (the model's hot path)."""
    return np.minimum(np.maximum(x, STATE_MIN), STATE_MAX)


def _decay_kept(x, keep, kind):
    """:func:`decay` with ``keep = 4096 - d`` given; `kind` "none" (every d = 0), "full" (every
    d = 4096) or "some" skips the arithmetic where it cannot change anything."""
    if kind == "none":
        return x
    if kind == "full":
        return np.zeros_like(x)
    scaled = x * keep
    # >> floors; adding 4095 first to negative products makes it round toward zero
    return (scaled + ((scaled < 0) * (DECAY_ONE - 1))) >> DECAY_BITS


def lfsr_next(state):
    """One step of the 16-bit Galois LFSR (:data:`LFSR_TAPS`), shifting right."""
    return (state >> 1) ^ (LFSR_TAPS if state & 1 else 0)


_LFSR_PERIOD = (1 << LFSR_BITS) - 1
_lfsr_tables = []


def lfsr_draws(state, count):
    """The next `count` states of the LFSR after `state` (an int64 array) and the new state.
    Uses the precomputed cycle of the maximal-length LFSR, so it is O(count) in numpy."""
    if not _lfsr_tables:
        sequence = np.empty(_LFSR_PERIOD, dtype=np.int64)
        value = 1
        for i in range(_LFSR_PERIOD):
            sequence[i] = value
            value = lfsr_next(value)
        position = np.zeros(1 << LFSR_BITS, dtype=np.int64)
        position[sequence] = np.arange(_LFSR_PERIOD)
        _lfsr_tables.extend((sequence, position))
    sequence, position = _lfsr_tables
    if count == 0:
        return np.zeros(0, dtype=np.int64), int(state)
    draws = sequence[(position[state] + 1 + np.arange(count)) % _LFSR_PERIOD]
    return draws, int(draws[-1])


def lfsr_at(states, lanes_of, offsets):
    """Draw number ``offsets + 1`` after each lane's state: ``states`` per lane, ``lanes_of`` the
    lane of each column of ``offsets`` (broadcast). Vectorised :func:`lfsr_draws`."""
    lfsr_draws(1, 0)                                  # build the tables
    sequence, position = _lfsr_tables
    start = position[np.asarray(states, dtype=np.int64)][lanes_of]
    return sequence[(start + 1 + offsets) % _LFSR_PERIOD]


def lfsr_advance(states, steps):
    """Each lane's state after `steps` (scalar or per lane) more draws, as a list of ints."""
    lfsr_draws(1, 0)
    sequence, position = _lfsr_tables
    after = sequence[(position[np.asarray(states, dtype=np.int64)] + steps) % _LFSR_PERIOD]
    return [int(x) for x in after]


def lfsr_seed(seed, lane):
    """The reset state of lane `lane`'s LFSR for a core seeded with `seed` (never zero)."""
    state = (seed + 0x9E37 * (lane + 1)) & ((1 << LFSR_BITS) - 1)
    return state or 1


def encoder_lfsr_seed(seed):
    """The input encoder's (32-bit) LFSR state after its 16-bit seed register is written: `seed`
    (1 if 0)."""
    return (seed & ((1 << LFSR_BITS) - 1)) or 1


def _encoder_step_matrix():
    """The encoder LFSR's :data:`ENCODER_LFSR_STEPS` steps as a 0/1 matrix over GF(2): new state
    bits = (matrix @ state bits) mod 2, where one step is ``(s >> 1) ^ (TAPS if s & 1 else 0)``."""
    n = ENCODER_LFSR_BITS
    one = np.zeros((n, n), dtype=np.int64)
    for i in range(n - 1):
        one[i, i + 1] = 1                           # bit i of the new state: bit i + 1 of the old
    for i in range(n):
        if ENCODER_LFSR_TAPS >> i & 1:
            one[i, 0] ^= 1                          # ... XOR bit 0 where the taps are
    matrix = np.eye(n, dtype=np.int64)
    for _ in range(ENCODER_LFSR_STEPS):
        matrix = one @ matrix % 2
    return matrix


@functools.cache
def _encoder_jump_images(count):
    """(count, 32): the encoder LFSR's state after 1 .. count draws from each one-bit state
    (column b: the state 1 << b jumped), as integers: the LFSR is linear over GF(2), so the state
    after j draws from s is the XOR of the images of s's set bits (a chip asks for one count,
    its channel count)."""
    step = _encoder_step_matrix()
    jumps, matrix = [], step
    for _ in range(count):
        jumps.append(matrix)
        matrix = step @ matrix % 2
    return np.stack(jumps).transpose(0, 2, 1) @ _ENCODER_BIT_WEIGHTS


_ENCODER_BIT_WEIGHTS = 1 << np.arange(ENCODER_LFSR_BITS, dtype=np.int64)


def encoder_draws(lfsr, count):
    """The encoder's next `count` Bernoulli draws from LFSR state `lfsr` and the state after
    them: each draw is the top :data:`ENCODER_DRAW_BITS` bits of the state after
    :data:`ENCODER_LFSR_STEPS` more LFSR steps (vectorised: the XOR of the jumped images of the
    state's set bits)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), int(lfsr)
    bits = np.flatnonzero((int(lfsr) >> np.arange(ENCODER_LFSR_BITS)) & 1)
    states = np.bitwise_xor.reduce(_encoder_jump_images(count)[:, bits], axis=1)
    return states >> (ENCODER_LFSR_BITS - ENCODER_DRAW_BITS), int(states[-1])


def encoder_spikes(mode, rate, phase, lfsr):
    """One step of the input encoder for every channel, in channel order: returns (fired,
    new phase, new LFSR state). PHASE: ``phase += rate``, a spike when that reaches 2**16,
    which is then subtracted. BERNOULLI: every channel (whatever its rate) takes the next draw
    of :func:`encoder_draws`; channel c spikes when its draw is < ``rate[c]`` (probability
    ``rate / 65536``)."""
    rate = np.asarray(rate, dtype=np.int64)
    phase = np.asarray(phase, dtype=np.int64)
    if mode is EncoderMode.PHASE:
        total = phase + rate
        fired = total >= ENCODER_RATE_ONE
        return fired, total - np.where(fired, ENCODER_RATE_ONE, 0), int(lfsr)
    draws, lfsr = encoder_draws(lfsr, len(rate))
    return draws < rate, phase.copy(), lfsr


@dataclass(frozen=True)
class NeuronProfile:
    """Parameters shared by the neurons that select this profile (docs/semantics.md)."""
    du: int = 0                 #: current decay, fraction of 4096 per step: 0 (none) .. 4096 (full)
    dv: int = 0                 #: voltage decay, fraction of 4096 per step
    threshold: int = 1 << 10    #: spike when v >= threshold + theta
    v_reset: int = 0            #: v after a spike in ResetMode.VALUE
    reset_mode: ResetMode = ResetMode.VALUE
    refractory: int = 0         #: steps during which v is held after a spike
    theta_plus: int = 0         #: adaptive threshold increment per spike
    dtheta: int = 0             #: adaptive threshold decay, fraction of 4096 per step

    def __post_init__(self):
        check_int("du", self.du, 0, DECAY_ONE)
        check_int("dv", self.dv, 0, DECAY_ONE)
        check_int("threshold", self.threshold, 0, STATE_MAX)
        check_int("v_reset", self.v_reset, STATE_MIN, STATE_MAX)
        if not isinstance(self.reset_mode, ResetMode):
            raise ModelError(f"reset_mode must be a ResetMode, not {self.reset_mode!r}")
        check_int("refractory", self.refractory, 0, (1 << REFRACTORY_BITS) - 1)
        check_int("theta_plus", self.theta_plus, 0, STATE_MAX)
        check_int("dtheta", self.dtheta, 0, DECAY_ONE)


@dataclass(frozen=True)
class StdpConfig:
    """Trace-based pair STDP of one core (docs/semantics.md, "Learning")."""
    pre_increment: int = 64     #: added to an axon's pre-trace per step with an event
    post_increment: int = 64    #: added to a neuron's post-trace per step with a spike
    pre_decay: int = 512        #: pre-trace decay, fraction of 4096 per step
    post_decay: int = 512       #: post-trace decay, fraction of 4096 per step
    a_plus: int = 16            #: potentiation amplitude
    a_minus: int = 16           #: depression amplitude
    shift: int = 8              #: dw = a * trace * reward / 2**shift, stochastically rounded
    w_min: int = WEIGHT_MIN
    w_max: int = WEIGHT_MAX
    seed: int = 1               #: LFSR seed of the core

    def __post_init__(self):
        for name in ("pre_increment", "post_increment", "a_plus", "a_minus"):
            check_int(name, getattr(self, name), 0, TRACE_MAX)
        check_int("pre_decay", self.pre_decay, 0, DECAY_ONE)
        check_int("post_decay", self.post_decay, 0, DECAY_ONE)
        check_int("shift", self.shift, 0, STDP_SHIFT_MAX)
        check_int("w_min", self.w_min, WEIGHT_MIN, WEIGHT_MAX)
        check_int("w_max", self.w_max, self.w_min, WEIGHT_MAX)
        check_int("seed", self.seed, 0, (1 << LFSR_BITS) - 1)


#: the largest k of a k-winner-take-all (4 bits: the core keeps the k best margins in registers)
WTA_K_MAX = 15
#: fraction bits of the normalisation factor ``f = (total << NORM_FRACTION) // sum`` (16 bits wide)
NORM_FRACTION = 12
NORM_FACTOR_MAX = (1 << 16) - 1
#: a neuron whose plastic weights sum to within ``total >> NORM_BAND_SHIFT`` of the target keeps
#: them (stochastic rounding would otherwise jitter every column at every rest)
NORM_BAND_SHIFT = 7
#: the largest normalisation target (20 bits: 4096 axons x 127 < 2**20 - 1)
NORM_TOTAL_MAX = (1 << 20) - 1


@dataclass(frozen=True)
class WtaConfig:
    """A hard k-winner-take-all over a group of a core's neurons (docs/semantics.md,
    "Winner-take-all"): in a step in which members reach threshold, only the `k` with the
    largest margin fire; every other member loses: ``v = v_reset`` (`reset`) or ``v -= inhibit``,
    and it is held (its refractory counter raised to `hold`) for `hold` steps."""
    k: int = 1                  #: winners per step, 1 .. WTA_K_MAX
    reset: bool = True          #: losers' v: their profile's v_reset (True) or v - inhibit (False)
    inhibit: int = 0            #: subtracted from the losers' v when not `reset`
    hold: int = 0               #: steps the losers stay held (refractory counter = max(it, hold))

    def __post_init__(self):
        check_int("k", self.k, 1, WTA_K_MAX)
        if not isinstance(self.reset, bool):
            raise ModelError(f"reset must be True or False, not {self.reset!r}")
        check_int("inhibit", self.inhibit, 0, STATE_MAX)
        check_int("hold", self.hold, 0, (1 << REFRACTORY_BITS) - 1)


def stdp_window(config, dt):
    """The STDP window as the chip computes it: the expected weight change (in weight LSBs) of
    one pre/post pair ``dt = t_post - t_pre`` steps apart, from zero traces, reward 1
    (docs/semantics.md, "The STDP window"). ``dt >= 0``: ``a_plus * x / 2**shift`` with ``x`` the
    pre-trace after ``dt`` integer decays of ``pre_increment``; ``dt < 0``: ``-a_minus * y /
    2**shift`` with ``y`` the post-trace after ``-dt`` decays of ``post_increment``. Each single
    pair's dw is this value stochastically rounded: its floor or its ceiling."""
    dt = int(dt)
    amplitude, trace, rate = ((config.a_plus, config.pre_increment, config.pre_decay) if dt >= 0 else
                              (-config.a_minus, config.post_increment, config.post_decay))
    trace = min(trace, TRACE_MAX)
    for _ in range(abs(dt)):
        trace = int(decay(trace, rate))
    return amplitude * trace / (1 << config.shift)


@dataclass(frozen=True)
class Route:
    """A destination of a source neuron's spikes: a core's axon, or the host (core/axon unused)."""
    core: int = 0
    axon: int = 0
    host: bool = False


class RouteTable(list):
    """The route entries (a list of :class:`Route`) with a cached array form for the router's
    vectorised step: ``arrays()`` is (host flag, core, axon) per entry, rebuilt after any item
    or slice assignment."""

    def __init__(self, entries=()):
        super().__init__(entries)
        self._arrays = None

    def __setitem__(self, index, value):
        self._arrays = None
        super().__setitem__(index, value)

    def arrays(self):
        if self._arrays is None:
            table = np.array([(r.host, r.core, r.axon) for r in self], dtype=np.int64).reshape(-1, 3)
            self._arrays = (table[:, 0].astype(bool), table[:, 1:])
        return self._arrays


@dataclass
class CoreState:
    """Memories and state of one core (all int64 numpy arrays)."""
    weights: np.ndarray
    weight_exp: int
    bias: np.ndarray
    profile: np.ndarray
    profiles: list
    u: np.ndarray
    v: np.ndarray
    refractory: np.ndarray
    theta: np.ndarray
    acc: np.ndarray
    pre_trace: np.ndarray
    post_trace: np.ndarray
    plastic: np.ndarray
    stdp: StdpConfig
    learning: bool
    lfsr: list
    pre_event: np.ndarray = field(default=None)
    wta: WtaConfig = None               #: the core's winner-take-all (None: off)
    wta_members: np.ndarray = None      #: its group (bool per neuron)
    norm_total: int = 0                 #: the rest command's normalisation target (0: off)
    rest_theta_decay: int = 0           #: the rest command's adaptive threshold decay (0: off)
    norm_members: np.ndarray = None     #: the neurons the rest command normalises and decays


class ChipModel:
    """The chip, step by step. Construct with a :class:`ChipShape`; configure with the setters;
    inject events; :meth:`run` steps and returns the spikes sent to the host."""

    def __init__(self, shape=None):
        shape = ChipShape() if shape is None else shape
        if not isinstance(shape, ChipShape):
            raise ModelError(f"shape must be a ChipShape, not {shape!r}")
        self.shape = shape
        self.step_count = 0
        self.reward = 1
        self.learning = True
        self.cores = [self._fresh_core() for _ in range(shape.cores)]
        # route tables exactly as the router holds them: a (base, count) pointer per source
        # neuron (index core * neurons + neuron) and a flat list of Route entries
        self.route_base = np.zeros(shape.cores * shape.neurons, dtype=np.int64)
        self.route_count = np.zeros(shape.cores * shape.neurons, dtype=np.int64)
        self.route_entries = [Route()] * shape.route_entries
        self._pending = _NO_EVENTS  # events routed to the next step: (core, axon) rows
        self._inputs = {}           # step -> list of (core, axon) injected by the host
        self._counts = [0] * len(Counter)      # by Counter value (the step loop's cheap form)
        self._profile_cache = {}
        # the input encoder: channel memory and chip registers (docs/semantics.md, "Input encoder")
        e = shape.encoder_channels
        self.encoder_rate = np.zeros(e, dtype=np.int64)
        self.encoder_phase = np.zeros(e, dtype=np.int64)
        self.encoder_core = np.zeros(e, dtype=np.int64)
        self.encoder_axon = np.zeros(e, dtype=np.int64)
        self.encoder_enabled = False
        self.encoder_mode = EncoderMode.PHASE
        self.encoder_seed = 1
        self.encoder_lfsr = encoder_lfsr_seed(1)
        self.encoder_steps = 0      # steps left before the encoder turns itself off (0: no limit)

    @property
    def route_entries(self):
        """The flat route entry table (a :class:`RouteTable`); assigning any list replaces it."""
        return self._route_entries

    @route_entries.setter
    def route_entries(self, entries):
        self._route_entries = RouteTable(entries)

    @property
    def counters(self):
        """The chip's event counters, {Counter: count} (a snapshot)."""
        return {c: self._counts[c.value] for c in Counter}

    def _fresh_core(self):
        s = self.shape
        zeros_n = lambda: np.zeros(s.neurons, dtype=np.int64)  # noqa: E731
        return CoreState(
            weights=np.zeros((s.axons, s.neurons), dtype=np.int8), weight_exp=0,
            bias=zeros_n(), profile=zeros_n(), profiles=[NeuronProfile()] * PROFILE_COUNT,
            u=zeros_n(), v=zeros_n(), refractory=zeros_n(), theta=zeros_n(), acc=zeros_n(),
            pre_trace=np.zeros(s.axons, dtype=np.int64), post_trace=zeros_n(),
            plastic=np.zeros(s.axons, dtype=bool), stdp=StdpConfig(), learning=False,
            lfsr=[lfsr_seed(StdpConfig().seed, lane) for lane in range(s.lanes)],
            pre_event=np.zeros(s.axons, dtype=bool), wta_members=np.ones(s.neurons, dtype=bool),
            norm_members=np.ones(s.neurons, dtype=bool))

    # --- configuration -----------------------------------------------------------------------
    def _core(self, core):
        return self.cores[check_int("core", core, 0, self.shape.cores - 1)]

    def set_weights(self, core, weights, weight_exp=0):
        """The whole A x N crossbar of `core` (int8 range) and its weight exponent."""
        state = self._core(core)
        w = check_array("weights", weights, (self.shape.axons, self.shape.neurons), WEIGHT_MIN, WEIGHT_MAX)
        state.weight_exp = check_int("weight_exp", weight_exp, 0, WEIGHT_EXP_MAX)
        state.weights = w.astype(np.int8)

    def set_profiles(self, core, profiles):
        """Up to PROFILE_COUNT NeuronProfiles for `core` (the rest keep the default)."""
        state = self._core(core)
        profiles = list(profiles)
        if not 1 <= len(profiles) <= PROFILE_COUNT:
            raise ModelError(f"profiles: {len(profiles)} given, allowed 1..{PROFILE_COUNT}")
        for i, p in enumerate(profiles):
            if not isinstance(p, NeuronProfile):
                raise ModelError(f"profiles[{i}] must be a NeuronProfile, not {p!r}")
        state.profiles = profiles + [NeuronProfile()] * (PROFILE_COUNT - len(profiles))

    def set_neurons(self, core, bias=None, profile=None):
        """Per-neuron bias (signed 24-bit) and profile index of `core`."""
        state = self._core(core)
        n = self.shape.neurons
        new_bias = state.bias if bias is None else check_array("bias", bias, (n,), STATE_MIN, STATE_MAX)
        new_profile = state.profile if profile is None else check_array(
            "profile", profile, (n,), 0, PROFILE_COUNT - 1)
        state.bias, state.profile = new_bias.copy(), new_profile.copy()

    def set_stdp(self, core, config, plastic=None):
        """Enable STDP on `core` with `config` (None disables); `plastic` masks learning axons."""
        state = self._core(core)
        if config is not None and not isinstance(config, StdpConfig):
            raise ModelError(f"config must be a StdpConfig or None, not {config!r}")
        mask = np.ones(self.shape.axons, dtype=bool) if plastic is None else check_array(
            "plastic", plastic, (self.shape.axons,), 0, 1).astype(bool)
        state.learning, state.plastic = config is not None, mask
        state.stdp = config or StdpConfig()
        state.lfsr = [lfsr_seed(state.stdp.seed, lane) for lane in range(self.shape.lanes)]

    def set_wta(self, core, config, members=None):
        """A hard k-winner-take-all on `core` (:class:`WtaConfig`; None turns it off) over the
        neurons of `members` (a bool mask, default every neuron). Not in the memory map yet: a
        Python-level configuration of the model (docs/semantics.md, "Winner-take-all")."""
        state = self._core(core)
        if config is not None and not isinstance(config, WtaConfig):
            raise ModelError(f"config must be a WtaConfig or None, not {config!r}")
        mask = np.ones(self.shape.neurons, dtype=bool) if members is None else check_array(
            "members", members, (self.shape.neurons,), 0, 1).astype(bool)
        state.wta, state.wta_members = config, mask

    def set_rest(self, core, normalise=0, theta_decay=0, members=None):
        """What the :meth:`rest` command does to `core`'s neurons of `members` (bool mask, default
        every neuron), besides clearing their state: normalise each one's plastic input weights
        to sum to `normalise` (0: off), and decay its adaptive threshold once by `theta_decay`
        (fraction of 4096, rounding toward zero, as ``dtheta`` does every step; 0: off).
        Python-level configuration of the model until the address map declares it
        (docs/semantics.md, "Rest")."""
        state = self._core(core)
        normalise = check_int("normalise", normalise, 0, NORM_TOTAL_MAX)
        theta_decay = check_int("theta_decay", theta_decay, 0, DECAY_ONE)
        mask = np.ones(self.shape.neurons, dtype=bool) if members is None else check_array(
            "members", members, (self.shape.neurons,), 0, 1).astype(bool)
        state.norm_total, state.rest_theta_decay, state.norm_members = normalise, theta_decay, mask

    def rest(self):
        """The rest between two samples, one command for the whole chip: every core's u, v,
        refractory counters, input accumulators and STDP traces go to 0 and the spikes in
        flight are dropped; the weights, LFSRs, the encoder, the step counter and queued host
        input are kept, and so are the adaptive thresholds, except that every core with a rest
        configuration
        decays the adaptive thresholds and normalises the plastic weights of its rest group
        (:meth:`set_rest`)."""
        for s in self.cores:
            for name in ("u", "v", "refractory", "acc", "post_trace", "pre_trace"):
                getattr(s, name)[:] = 0
            s.pre_event[:] = False
            if s.rest_theta_decay:
                s.theta = np.where(s.norm_members, decay(s.theta, s.rest_theta_decay), s.theta)
            if s.norm_total:
                self._normalise(s)
        self._pending = _NO_EVENTS

    def _normalise(self, s):
        """Scale each member neuron's plastic input weights toward the sum ``norm_total``:
        ``f = min((total << 12) // sum, 65535)``, ``w = clip((w * f + r) >> 12)`` with ``r`` the
        low 12 bits of the neuron's lane LFSR stepped once per plastic synapse (members
        ascending, axons ascending): stochastic rounding, so the expected sum is the target.
        A neuron whose plastic weights sum to <= 0, or to within ``total >> 7`` of the target,
        keeps them (its synapses still draw)."""
        lanes = self.shape.lanes
        neurons, axons = np.flatnonzero(s.norm_members), np.flatnonzero(s.plastic)
        if not neurons.size or not axons.size:
            return
        block = s.weights[np.ix_(axons, neurons)]
        sums = block.sum(axis=0)
        factor = np.where(sums > 0, np.minimum((s.norm_total << NORM_FRACTION) // np.maximum(sums, 1),
                                               NORM_FACTOR_MAX), 1 << NORM_FRACTION)
        neuron_lanes = neurons % lanes
        rank = np.zeros(neurons.size, dtype=np.int64)
        per_lane = np.zeros(lanes, dtype=np.int64)
        for i, lane in enumerate(neuron_lanes.tolist()):
            rank[i] = per_lane[lane]
            per_lane[lane] += 1
        offsets = (rank * axons.size)[None, :] + np.arange(axons.size)[:, None]
        draws = lfsr_at(s.lfsr, neuron_lanes, offsets)
        s.lfsr = lfsr_advance(s.lfsr, per_lane * axons.size)
        scaled = (block * factor + (draws & ((1 << NORM_FRACTION) - 1))) >> NORM_FRACTION
        scaled = np.where((sums > 0) & (np.abs(sums - s.norm_total) > s.norm_total >> NORM_BAND_SHIFT), scaled, block)
        s.weights[np.ix_(axons, neurons)] = np.clip(scaled, s.stdp.w_min, s.stdp.w_max)

    def set_routes(self, routes):
        """Replace the route table: {(core, neuron): [Route, ...]}. Entries are laid out
        contiguously in (core, neuron) order, as the host compiler does."""
        table, total = {}, 0
        for (core, neuron), entries in routes.items():
            check_int("route source core", core, 0, self.shape.cores - 1)
            check_int("route source neuron", neuron, 0, self.shape.neurons - 1)
            entries = tuple(entries)
            for r in entries:
                if not isinstance(r, Route):
                    raise ModelError(f"route of ({core}, {neuron}) must be Route, not {r!r}")
                if not r.host:
                    check_int("route destination core", r.core, 0, self.shape.cores - 1)
                    check_int("route destination axon", r.axon, 0, self.shape.axons - 1)
            if len(entries) > ROUTE_COUNT_MAX:
                raise ModelError(f"neuron ({core}, {neuron}) has {len(entries)} routes, "
                                 f"allowed 0..{ROUTE_COUNT_MAX}")
            total += len(entries)
            if entries:
                table[(int(core), int(neuron))] = entries
        if total > self.shape.route_entries:
            raise ModelError(f"route table needs {total} entries, allowed 0..{self.shape.route_entries}")
        self.route_base[:] = 0
        self.route_count[:] = 0
        self.route_entries = [Route()] * self.shape.route_entries
        base = 0
        for (core, neuron), entries in sorted(table.items()):
            source = core * self.shape.neurons + neuron
            self.route_base[source], self.route_count[source] = base, len(entries)
            self.route_entries[base:base + len(entries)] = entries
            base += len(entries)

    def routes_of(self, core, neuron):
        """The route entries of source neuron (core, neuron), in table order."""
        source = core * self.shape.neurons + neuron
        base, count = int(self.route_base[source]), int(self.route_count[source])
        return [self.route_entries[i % self.shape.route_entries] for i in range(base, base + count)]

    def set_encoder(self, rates=None, phases=None, targets=None, *, mode=None, enabled=None, seed=None,
                    steps=None):
        """Configure the input encoder through its memory map: per-channel `rates`, `phases`,
        `targets` ((core, axon) pairs), all of length ``shape.encoder_channels``; the chip-wide
        `mode` (:class:`EncoderMode`), `enabled`, LFSR `seed` and `steps` (it turns itself off
        after that many steps; 0: no limit). None leaves a part unchanged; every part is
        validated before anything changes."""
        e = self.shape.encoder_channels
        writes = []
        if rates is not None:
            writes.append((EncoderField.RATE.value * e, check_array("rates", rates, (e,), 0, ENCODER_RATE_ONE)))
        if phases is not None:
            writes.append((EncoderField.PHASE.value * e,
                           check_array("phases", phases, (e,), 0, ENCODER_RATE_ONE - 1)))
        if targets is not None:
            t = check_array("targets", targets, (e, 2), 0, (1 << 16) - 1)
            check_array("target cores", t[:, 0], (e,), 0, self.shape.cores - 1)
            check_array("target axons", t[:, 1], (e,), 0, self.shape.axons - 1)
            writes.append((EncoderField.TARGET.value * e, t[:, 1] | t[:, 0] << 16))
        registers = {}
        if mode is not None or enabled is not None:
            if mode is not None and not isinstance(mode, EncoderMode):
                raise ModelError(f"mode must be an EncoderMode, not {mode!r}")
            mode = self.encoder_mode if mode is None else mode
            enabled = self.encoder_enabled if enabled is None else bool(enabled)
            registers[ChipRegister.ENCODER.value] = int(enabled) | mode.value << 1
        if seed is not None:
            registers[ChipRegister.ENCODER_SEED.value] = check_int("seed", seed, 0, (1 << LFSR_BITS) - 1)
        if steps is not None:
            registers[ChipRegister.ENCODER_STEPS.value] = check_int("steps", steps, 0, (1 << 16) - 1)
        if registers and not e:
            raise ModelError("this chip has no input encoder (encoder_channels = 0)")
        for addr, words in writes:
            self.write_words(MemorySpace.ENCODER, 0, addr, words)
        for addr, word in registers.items():
            self.write_words(MemorySpace.CHIP, 0, addr, [word])

    def set_reward(self, reward):
        """The third factor multiplying every STDP update (signed 8-bit; 1 = plain STDP)."""
        self.reward = check_int("reward", reward, -128, 127)

    # --- state access ------------------------------------------------------------------------
    def state(self, core):
        """A copy of `core`'s neuron state: dict of u, v, refractory, theta, pre/post traces."""
        s = self._core(core)
        return {k: getattr(s, k).copy() for k in ("u", "v", "refractory", "theta", "pre_trace", "post_trace")}

    def weights(self, core):
        return self._core(core).weights.astype(np.int64)

    def reset_state(self):
        """Zero the neuron state, traces, queued events and the step counter; keep configuration.
        The input encoder keeps its channels (phases included: the host rewrites them) and its
        LFSR is reloaded from its seed."""
        for s in self.cores:
            for name in ("u", "v", "refractory", "theta", "acc", "post_trace"):
                getattr(s, name)[:] = 0
            s.pre_trace[:] = 0
            s.pre_event[:] = False
            s.lfsr = [lfsr_seed(s.stdp.seed, lane) for lane in range(self.shape.lanes)]
        self._pending, self._inputs = _NO_EVENTS, {}
        self.step_count = 0
        self.encoder_lfsr = encoder_lfsr_seed(self.encoder_seed)

    # --- the memory map (neurofabric.hdl.memory_map; docs/protocol.md "Memory map") ------------
    def _address(self, space, core, addr, count):
        """Validate a word range of one memory (ModelMemoryError); return the MemorySpace."""
        return check_access(space, self.shape, core, addr, count, error=ModelMemoryError)

    def write_words(self, space, core, addr, words):
        """Write 32-bit words into memory `space` of `core` from `addr` on (ints in
        [-2**31, 2**32 - 1]; a signed field's -3 may be given as 0xFFFFFFFD). Every word is
        checked against the memory map first (:class:`ModelMemoryError`), rules between words
        (``w_min <= w_max``) on the values after the write: a rejected write changes nothing."""
        words = np.asarray(words) if not isinstance(words, np.ndarray) else words
        space = self._address(space, core, addr, len(words))
        words = check_write(space, self.shape, core, addr, words,
                            stored=lambda at: self._read_word(space, core, at), error=ModelMemoryError)
        c = self.cores[core]
        parts = [(block, rows, block.word.unpack(words[offsets]))
                 for block, offsets, rows in MEMORY_MAP[space].split(self.shape, addr, np.arange(len(words)))
                 if len(offsets)]
        if space is MemorySpace.STDP:       # one new config (w_min <= w_max holds after the write)
            self._write_stdp(c, {block.key: (block.word.name, int(fields[block.word.name][0]))
                                 for block, _, fields in parts})
        for block, rows, fields in parts:
            if space is not MemorySpace.STDP:
                self._write_block(space, c, block.key, rows, fields)

    def read_words(self, space, core, addr, count):
        """Read `count` words of memory `space` of `core` (signed fields sign-extended)."""
        space = self._address(space, core, addr, count)
        out = np.zeros(count, dtype=np.int64)
        for block, offsets, rows in MEMORY_MAP[space].split(self.shape, addr, np.arange(count)):
            if len(offsets):
                out[offsets] = self._read_block(space, self.cores[core], block, rows)
        return out

    def _read_word(self, space, core, addr):
        return int(self.read_words(space, core, addr, 1)[0])

    def _state_arrays(self, c):
        return {StateField.U: c.u, StateField.V: c.v, StateField.REFRACTORY: c.refractory, StateField.THETA: c.theta}

    def _write_block(self, space, c, key, rows, fields):
        """Apply checked words of one block: `rows` in the block, `fields` their unpacked fields."""
        name, value = next(iter(fields.items()))
        if space is MemorySpace.WEIGHT:
            np.put(c.weights, rows, value)
        elif space is MemorySpace.NEURON:
            c.bias[rows], c.profile[rows] = fields["bias"], fields["profile"]
        elif space is MemorySpace.PROFILE:
            profiles = list(c.profiles)
            for row, v in zip(rows.tolist(), value.tolist()):
                v = ResetMode(v) if key is ProfileField.RESET_MODE else v
                profiles[row] = replace(profiles[row], **{name: v})
            c.profiles = profiles
        elif space is MemorySpace.STATE:
            self._state_arrays(c)[key][rows] = value
        elif space is MemorySpace.CORE:
            if key is CoreRegister.WEIGHT_EXP:
                c.weight_exp = int(value[0])
            else:
                c.learning = bool(value[0])
        elif space is MemorySpace.ROUTE_POINTER:
            self.route_base[rows], self.route_count[rows] = fields["base"], fields["count"]
        elif space is MemorySpace.ROUTE_ENTRY:
            for row, kind, dest, axon in zip(rows.tolist(), fields["kind"].tolist(), fields["core"].tolist(),
                                             fields["axon"].tolist()):
                self.route_entries[row] = Route(host=True) if kind == RouteKind.HOST.value else Route(dest, axon)
        elif space is MemorySpace.TRACE:
            (c.pre_trace if key == TraceField.PRE else c.post_trace)[rows] = value
        elif space is MemorySpace.PLASTIC:
            c.plastic[rows] = value.astype(bool)
        elif space is MemorySpace.CHIP:
            self._write_register(key, int(value[0]))
        elif key is EncoderField.RATE:
            self.encoder_rate[rows] = value
        elif key is EncoderField.PHASE:
            self.encoder_phase[rows] = value
        else:
            self.encoder_core[rows], self.encoder_axon[rows] = fields["core"], fields["axon"]

    def _write_stdp(self, c, registers):
        """STDP registers, {StdpField: (name, value)}: REWARD is the chip's; the others replace
        the core's StdpConfig at once (a new seed reseeds every lane's LFSR)."""
        changes = {}
        for key, (name, value) in registers.items():
            if key is StdpField.REWARD:
                self.reward = value
            else:
                changes[name] = value
        if changes:
            c.stdp = replace(c.stdp, **changes)
        if "seed" in changes:
            c.lfsr = [lfsr_seed(c.stdp.seed, lane) for lane in range(self.shape.lanes)]

    def _write_register(self, register, value):
        if register is ChipRegister.LEARNING:
            self.learning = bool(value)
        elif register is ChipRegister.REWARD:
            self.reward = value
        elif register is ChipRegister.ENCODER:
            self.encoder_enabled, self.encoder_mode = bool(value & 1), EncoderMode(value >> 1)
        elif register is ChipRegister.ENCODER_STEPS:
            self.encoder_steps = value
        else:
            self.encoder_seed = value
            self.encoder_lfsr = encoder_lfsr_seed(self.encoder_seed)

    def _read_block(self, space, c, block, rows):
        """The words of `rows` of one block of `space` (an int64 array)."""
        key, word = block.key, block.word
        if space is MemorySpace.WEIGHT:
            return c.weights.reshape(-1)[rows]
        if space is MemorySpace.NEURON:
            return word.pack(bias=c.bias[rows], profile=c.profile[rows])
        if space is MemorySpace.PROFILE:
            values = [getattr(c.profiles[row], word.name) for row in rows.tolist()]
            return np.array([int(getattr(v, "value", v)) for v in values], dtype=np.int64)
        if space is MemorySpace.STATE:
            return self._state_arrays(c)[key][rows]
        if space is MemorySpace.ROUTE_POINTER:
            return word.pack(base=self.route_base[rows], count=self.route_count[rows])
        if space is MemorySpace.ROUTE_ENTRY:
            return np.array([word.pack(kind=RouteKind.HOST.value) if r.host else word.pack(axon=r.axon, core=r.core)
                             for r in (self.route_entries[row] for row in rows.tolist())], dtype=np.int64)
        if space is MemorySpace.TRACE:
            return (c.pre_trace if key == TraceField.PRE else c.post_trace)[rows]
        if space is MemorySpace.PLASTIC:
            return c.plastic[rows].astype(np.int64)
        if space is MemorySpace.ENCODER:
            if key is EncoderField.RATE:
                return self.encoder_rate[rows]
            if key is EncoderField.PHASE:
                return self.encoder_phase[rows]
            return word.pack(axon=self.encoder_axon[rows], core=self.encoder_core[rows])
        return np.full(len(rows), self._read_register(space, c, key, word), dtype=np.int64)

    def _read_register(self, space, c, key, word):
        """One word of a register space (CORE, STDP, COUNTER, CHIP)."""
        if space is MemorySpace.CORE:
            return c.weight_exp if key is CoreRegister.WEIGHT_EXP else int(c.learning)
        if space is MemorySpace.STDP:
            return self.reward if key is StdpField.REWARD else getattr(c.stdp, word.name)
        if space is MemorySpace.COUNTER:
            return self.counters[key] & WORD_MASK
        if word.requires is not None and not word.requires(self.shape):
            return 0
        return {ChipRegister.STEP: self.step_count & WORD_MASK, ChipRegister.LEARNING: int(self.learning),
                ChipRegister.REWARD: self.reward,
                ChipRegister.ENCODER: int(self.encoder_enabled) | self.encoder_mode.value << 1,
                ChipRegister.ENCODER_SEED: self.encoder_seed, ChipRegister.ENCODER_STEPS: self.encoder_steps}[key]

    # --- running -----------------------------------------------------------------------------
    def inject(self, step, events):
        """Queue host events (an iterable of (core, axon), or an (E, 2) integer array) for
        absolute time step `step`."""
        check_int("step", step, self.step_count, (1 << 32) - 1)
        events = np.asarray(events if isinstance(events, np.ndarray) else list(events))
        if events.size == 0:
            return
        fast = (events.dtype.kind in "iu" and events.ndim == 2 and events.shape[1] == 2 and events.min() >= 0
                and events[:, 0].max() < self.shape.cores and events[:, 1].max() < self.shape.axons)
        if fast:
            events = events.astype(np.int64, copy=False)
        else:
            events = check_array("events", events, (len(events), 2), 0, (1 << 32) - 1)
            check_array("event core", events[:, 0], (len(events),), 0, self.shape.cores - 1)
            check_array("event axon", events[:, 1], (len(events),), 0, self.shape.axons - 1)
        self._queue(int(step), events)

    def _queue(self, step, events):
        """Queue validated (E, 2) int64 (core, axon) rows for step `step` (no checks: callers
        validate, as :meth:`inject` and the model backend do)."""
        queued = self._inputs.get(step)
        self._inputs[step] = events if queued is None else np.concatenate([queued, events])

    def run(self, steps):
        """Run `steps` time steps; return the host spikes as a list of (step, core, neuron)."""
        return [tuple(row) for row in self.run_array(steps).tolist()]

    def run_array(self, steps):
        """:meth:`run`, with the host spikes as an (S, 3) int64 array of (step, core, neuron)."""
        check_int("steps", steps, 0, (1 << 32) - 1)
        out = [self._step() for _ in range(steps)]
        return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)

    def step(self):
        """One time step; returns this step's host spikes as (step, core, neuron)."""
        return [tuple(row) for row in self._step().tolist()]

    def _step(self):
        """One time step; returns this step's host spikes as an (S, 3) array."""
        t = self.step_count
        host = self._inputs.pop(t, _NO_EVENTS)
        # routed spikes, then the encoder's channels in order, then host inputs (the order only
        # matters when an accumulator saturates; it is the hardware's arrival order)
        events = np.concatenate([self._pending, self._encode(), host])
        routed, host_events = len(self._pending), len(host)
        self._pending = _NO_EVENTS
        # (1) integrate
        for core, s in enumerate(self.cores):
            s.pre_event[:] = False
            axons = events[events[:, 0] == core, 1] if len(self.cores) > 1 else events[:, 1]
            if axons.size:
                self._integrate(s, axons)
        counts = self._counts
        counts[_INPUT_EVENTS] += host_events
        counts[_ROUTED_EVENTS] += routed
        # (2) update, (3) learn
        spikes = []
        for s in self.cores:
            fired = self._update(s)
            if self.learning and s.learning:
                self._learn(s, fired)
            spikes.append(np.flatnonzero(fired))
        # (4) route, cores ascending, neurons ascending, each neuron's entries in table order
        sources = np.concatenate([core * self.shape.neurons + f for core, f in enumerate(spikes)])
        counts[_SPIKES] += len(sources)
        out = _NO_SPIKES
        if sources.size:
            fan_out = self.route_count[sources]
            total = int(fan_out.sum())
            if total:
                starts = np.repeat(self.route_base[sources] - np.cumsum(fan_out) + fan_out, fan_out)
                index = (starts + np.arange(total)) % self.shape.route_entries
                is_host, targets = self.route_entries.arrays()
                to_host = is_host[index]
                self._pending = targets[index[~to_host]]
                who = np.repeat(sources, fan_out)[to_host]
                out = np.stack([np.full(len(who), t), who // self.shape.neurons, who % self.shape.neurons], axis=1)
        counts[_HOST_SPIKES] += len(out)
        counts[_STEPS] += 1
        self.step_count += 1
        return out

    def _integrate(self, s, axons):
        """Phase (1) for one core: add the weight row of every event (`axons`, arrival order)."""
        s.pre_event[axons] = True
        if len(axons) <= SATURATION_FREE_EVENTS:
            # no partial sum can leave the accumulator's range: the saturating sequential sum
            # equals the exact sum, whatever the order; gather only the rows with events
            counts = np.bincount(axons, minlength=len(s.weights))
            rows = np.flatnonzero(counts)
            block = s.weights[rows]
            # int8 rows summed in int32: exact (at most 65 536 rows of |w| <= 128 stay below 2**31)
            total = (block.sum(axis=0, dtype=np.int32) if len(rows) == len(axons)
                     else counts[rows] @ block.astype(np.int64))
            s.acc = np.minimum(np.maximum(s.acc + total, ACC_MIN), ACC_MAX)
        else:
            for axon in axons:
                s.acc = np.clip(s.acc + s.weights[axon], ACC_MIN, ACC_MAX)

    def _encode(self):
        """The input encoder's events for this step, channel order, as (core, axon) rows."""
        if not (self.encoder_enabled and self.shape.encoder_channels):
            return _NO_EVENTS
        fired, self.encoder_phase, self.encoder_lfsr = encoder_spikes(
            self.encoder_mode, self.encoder_rate, self.encoder_phase, self.encoder_lfsr)
        if self.encoder_steps:
            self.encoder_steps -= 1
            self.encoder_enabled = self.encoder_steps != 0
        channels = np.flatnonzero(fired)
        return np.stack([self.encoder_core[channels], self.encoder_axon[channels]], axis=1)

    def _profile_arrays(self, s):
        """Per-neuron parameter arrays from the profiles (cached until profiles or indices change),
        with ``keep_*`` = 4096 - decay and flags for decays that are all 0 or all 4096."""
        key = (tuple(s.profiles), s.profile.tobytes())
        cached = self._profile_cache.get(id(s))
        if cached is not None and cached[0] == key:
            return cached[1]
        fields = ("du", "dv", "threshold", "v_reset", "refractory", "theta_plus", "dtheta")
        table = {f: np.array([getattr(p, f) for p in s.profiles], dtype=np.int64) for f in fields}
        table["subtract"] = np.array([p.reset_mode is ResetMode.SUBTRACT for p in s.profiles])
        arrays = {f: column[s.profile] for f, column in table.items()}
        for name in ("du", "dv", "dtheta"):
            arrays["keep_" + name] = DECAY_ONE - arrays[name]
            arrays["all_" + name] = ("none" if not arrays[name].any() else
                                     "full" if np.all(arrays[name] == DECAY_ONE) else "some")
        arrays["any_subtract"] = bool(arrays["subtract"].any())
        self._profile_cache[id(s)] = (key, arrays)
        return arrays

    def _update(self, s):
        """Phase (2) for one core: returns the boolean spike vector (after the winner-take-all,
        if the core has one: :meth:`set_wta`)."""
        p = self._profile_arrays(s)
        drive = s.acc << s.weight_exp
        s.u = _sat(drive if p["all_du"] == "full" else _decay_kept(s.u, p["keep_du"], p["all_du"]) + drive)
        s.acc = np.zeros_like(s.acc)
        s.theta = _decay_kept(s.theta, p["keep_dtheta"], p["all_dtheta"])
        active = s.refractory == 0
        v_new = _sat(_decay_kept(s.v, p["keep_dv"], p["all_dv"]) + s.u + s.bias)
        effective = p["threshold"] + s.theta
        fired = active & (v_new >= effective)
        losers = None
        any_fired = fired.any()
        if s.wta is not None and any_fired:
            fired, losers = self._winners(s, fired, v_new - effective)
        s.v = np.where(active, v_new, s.v)          # refractory neurons hold v
        s.refractory = np.maximum(s.refractory - 1, 0)
        if any_fired:
            f = np.flatnonzero(fired)
            s.v[f] = (np.where(p["subtract"][f], _sat(v_new[f] - effective[f]), p["v_reset"][f])
                      if p["any_subtract"] else p["v_reset"][f])
            s.refractory[f] = p["refractory"][f]
            s.theta[f] = np.minimum(s.theta[f] + p["theta_plus"][f], STATE_MAX)
        if losers is not None:
            w = s.wta
            s.v = np.where(losers, p["v_reset"] if w.reset else _sat(s.v - w.inhibit), s.v)
            s.refractory = np.where(losers, np.maximum(s.refractory, w.hold), s.refractory)
        return fired

    @staticmethod
    def _winners(s, fired, margin):
        """The k-winner-take-all of a core (docs/semantics.md, "Winner-take-all"): of the group
        members that reached threshold, the `k` with the largest margin ``v' - threshold -
        theta`` fire (equal margins: the lower neuron index first); if any member fires, every
        other member loses. Returns (fired, losers)."""
        w, members = s.wta, s.wta_members
        candidates = np.flatnonzero(fired & members)
        if not candidates.size:
            return fired, None
        if candidates.size > w.k:
            # stable sort on -margin keeps ascending index order among equal margins
            order = np.argsort(-margin[candidates], kind="stable")
            fired = fired.copy()
            fired[candidates[order[w.k:]]] = False
        return fired, members & ~fired

    def _learn(self, s, fired):
        """Phase (3) for one core (docs/semantics.md, "Learning").

        Order (it fixes which LFSR draw each synapse gets): decay both traces; depress the rows
        of plastic axons that had an event this step, in ascending axon order, using the
        post-traces from before this step's spikes; add the pre-trace increments; potentiate the
        plastic synapses of the neurons that fired, in ascending neuron order, using the
        pre-traces including this step's events; add the post-trace increments. Synapse
        (axon, neuron) draws from lane ``neuron % lanes``'s LFSR, one draw per visited synapse."""
        c, lanes, n = s.stdp, self.shape.lanes, self.shape.neurons
        s.pre_trace = decay(s.pre_trace, c.pre_decay)
        s.post_trace = decay(s.post_trace, c.post_decay)
        mask = (1 << c.shift) - 1

        def amounts(a, traces, draws):
            m = a * traces * self.reward
            magnitude = (np.abs(m) + (draws & mask)) >> c.shift
            return np.where(m < 0, -magnitude, magnitude)

        lane_of = np.arange(n) % lanes
        rows = np.flatnonzero(s.pre_event & s.plastic)
        if rows.size:
            # lane p visits its neurons p, p + lanes, ... row after row, so neuron n's draw in
            # the r-th depressed row is its lane's draw number r * (neurons / lanes) + n // lanes
            per_row = n // lanes
            offsets = np.arange(rows.size)[:, None] * per_row + (np.arange(n) // lanes)[None, :]
            draws = lfsr_at(s.lfsr, lane_of, offsets)
            s.lfsr = lfsr_advance(s.lfsr, rows.size * per_row)
            dw = amounts(c.a_minus, s.post_trace[None, :], draws)
            s.weights[rows] = np.clip(s.weights[rows] - dw, c.w_min, c.w_max)
        s.pre_trace = np.where(s.pre_event, np.minimum(s.pre_trace + c.pre_increment, TRACE_MAX), s.pre_trace)
        columns, axons = np.flatnonzero(fired), np.flatnonzero(s.plastic)
        if columns.size and axons.size:
            # a fired neuron's rank among the fired neurons of its lane fixes its block of draws
            column_lanes = columns % lanes
            rank = np.zeros(columns.size, dtype=np.int64)
            per_lane = np.zeros(lanes, dtype=np.int64)
            for i, lane in enumerate(column_lanes):
                rank[i] = per_lane[lane]
                per_lane[lane] += 1
            offsets = (rank * axons.size)[None, :] + np.arange(axons.size)[:, None]
            draws = lfsr_at(s.lfsr, column_lanes, offsets)
            s.lfsr = lfsr_advance(s.lfsr, per_lane * axons.size)
            dw = amounts(c.a_plus, s.pre_trace[axons][:, None], draws)
            block = s.weights[np.ix_(axons, columns)]
            s.weights[np.ix_(axons, columns)] = np.clip(block + dw, c.w_min, c.w_max)
        s.post_trace = np.where(fired, np.minimum(s.post_trace + c.post_increment, TRACE_MAX), s.post_trace)
