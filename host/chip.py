"""`Chip`: load a network, stream spikes in and out, control learning, read weights back.

One class over every backend (:mod:`neurofabric.host.backend`)::

    with Chip.open("model") as chip:            # "model", "sim", "serial:///dev/ttyUSB1",
        chip.load(net)                          # "socket://127.0.0.1:PORT"
        out = chip.run({inp: events}, steps=32, record=[hid])
        out.spikes(hid)                         # (E, 2) array of (step, index)
        out.raster(hid)                         # (steps, size) array of 0/1

Input events for an input population may be given as (docs/host.md, "Input events"):

- a dense raster: an array of shape (steps', size), steps' <= steps; bool, or non-negative
  integer counts (k events for that channel in that step);
- (step, index) pairs: an integer array of shape (E, 2), or a tuple ``(steps_array, indices)``;
- a structured array with a time field (``t``, ``ts`` or ``timestamp``) and an index field
  (``x``, ``i``, ``index``, ``idx`` or ``neuron``), as tonic produces; the step is
  ``floor(t / dt)`` with the ``dt`` argument of :meth:`Chip.run` (default 1: t is in steps).

Steps are relative to the start of the run. Everything is validated before any byte is sent.

Or the chip makes its own input spikes (chips whose IDENTIFY reports encoder channels)::

    chip.encode({inp: intensities}, mode="phase", steps=16)     # load the sample once
    out = chip.run(steps=20)                    # the encoder drives `inp` for the first 16 steps
"""

import math
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from neurofabric.hdl.protocol import (
    LFSR_BITS,
    ChipRegister,
    Counter,
    EncoderField,
    EncoderMode,
    MemorySpace,
    StateField,
    StdpField,
)
from neurofabric.host.backend import (
    Backend,
    DeviceUnavailable,
    backend_names,
    check_options,
    open_named_backend,
)
from neurofabric.host.compiler import STATE_WORDS, MemoryWrite, compile_network, encoder_layout
from neurofabric.host.encoding import bernoulli_encoder_words, phase_encoder_words
from neurofabric.host.model import WEIGHT_MAX, WEIGHT_MIN
from neurofabric.host.network import (
    CapacityError,
    Connection,
    EventError,
    Network,
    Population,
    RangeError,
    ShapeError,
    ValidationError,
    check_int,
)

__all__ = ["Chip", "RunResult", "Progress", "parse_events", "DeviceUnavailable"]


#: the input queue assumed when a chip reports 0 (not reported): the gateware's default depth
UNREPORTED_INPUT_QUEUE = 64
#: the most steps one inject+run covers: the link tags input events with 16-bit steps
MAX_CHUNK_STEPS = 1 << 14


class Progress(tqdm):
    """A tqdm progress bar on stderr: ``Progress(total, label, enabled)``. ``enabled=None`` shows
    it only when stderr is a terminal."""

    def __init__(self, total, label="", enabled=None, stream=None):
        super().__init__(total=max(1, int(total)), desc=label, file=sys.stderr if stream is None else stream,
                         disable=None if enabled is None else not enabled, leave=True, dynamic_ncols=True)

    @property
    def enabled(self):
        return not self.disable


_TIME_FIELDS = ("t", "ts", "timestamp")
_INDEX_FIELDS = ("x", "i", "index", "idx", "neuron")


def parse_events(events, size, steps, dt=1.0, name="events", max_per_step=None):
    """Normalise one population's input events to an int64 (E, 2) array of (step, index),
    sorted by step. Raises :class:`EventError` / :class:`ShapeError` naming what is wrong.
    `max_per_step`: refuse a count raster with more events in one step (the chip's input queue)
    before expanding it."""
    if isinstance(events, tuple) and len(events) == 2:
        t, idx = (np.asarray(a) for a in events)
        if t.shape != idx.shape or t.ndim != 1:
            raise ShapeError(f"{name}: (steps, indices) must be two 1-D arrays of equal length, got shapes "
                             f"{t.shape} and {idx.shape}", name, (t.shape, idx.shape), ("(E,) and (E,)",))
        pairs = _int_column(f"{name} steps", t), _int_column(f"{name} indices", idx)
    else:
        array = np.asarray(events)
        if array.dtype.names:
            tf = next((f for f in _TIME_FIELDS if f in array.dtype.names), None)
            xf = next((f for f in _INDEX_FIELDS if f in array.dtype.names), None)
            if tf is None or xf is None:
                raise ShapeError(f"{name}: a structured array needs a time field {_TIME_FIELDS} and an index "
                                 f"field {_INDEX_FIELDS}; it has {array.dtype.names}", name, array.dtype.names,
                                 (_TIME_FIELDS, _INDEX_FIELDS))
            if not dt > 0:
                raise EventError(f"dt = {dt} is out of range: allowed > 0", "dt", dt, (0, math.inf))
            t = np.asarray(array[tf], dtype=np.float64)
            if not np.all(np.isfinite(t)):
                at = int(np.flatnonzero(~np.isfinite(t))[0])
                raise EventError(f"{name}: field {tf!r} holds {t[at]} at position {at}; allowed: finite times",
                                 name, float(t[at]), (-math.inf, math.inf))
            pairs = np.floor(t / dt).astype(np.int64), _int_column(f"{name} field {xf!r}", array[xf])
        elif array.ndim == 2 and array.dtype.kind == "b":
            pairs = _raster_pairs(array, size, steps, name, max_per_step)
        elif array.ndim == 2 and array.shape[1] == 2 and size == 2 and array.size:
            raise EventError(f"{name}: an integer array of shape {array.shape} is ambiguous for a population "
                             "of size 2; pass a bool raster or a (steps, indices) tuple", name, array.shape,
                             ("bool raster", "(steps, indices) tuple"))
        elif array.ndim == 2 and array.shape[1] == 2:
            pairs = _int_column(f"{name} steps", array[:, 0]), _int_column(f"{name} indices", array[:, 1])
        elif array.ndim == 2 and array.shape[1] == size:
            pairs = _raster_pairs(array, size, steps, name, max_per_step)
        elif array.size == 0:
            pairs = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        else:
            raise ShapeError(f"{name} has shape {array.shape}; expected a raster (<= {steps}, {size}), "
                             "(E, 2) (step, index) pairs or a structured array", name, array.shape,
                             (f"(<= {steps}, {size})", "(E, 2)", "structured array"))
    t, idx = pairs
    if t.size:
        bad = (t < 0) | (t >= steps)
        if np.any(bad):
            raise EventError(f"{name}: step {int(t[bad][0])} is out of range: allowed [0, {steps - 1}]",
                             name, int(t[bad][0]), (0, steps - 1))
        bad = (idx < 0) | (idx >= size)
        if np.any(bad):
            raise EventError(f"{name}: index {int(idx[bad][0])} is out of range: allowed [0, {size - 1}]",
                             name, int(idx[bad][0]), (0, size - 1))
    order = np.argsort(t, kind="stable")
    return np.stack([t[order], idx[order]], axis=1).astype(np.int64).reshape(-1, 2)


def _int_column(name, values):
    values = np.asarray(values)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if np.any(bad):
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            position = at[0] if len(at) == 1 else at
            raise EventError(f"{name} must be integers; it holds {values[at]} at position {position}", name,
                             float(values[at]), "integers")
    elif values.dtype.kind not in "iub":
        raise ShapeError(f"{name} must be integers, got dtype {values.dtype}", name, values.dtype,
                         ("integer", "bool", "float holding integers"))
    return values.astype(np.int64).ravel()


def _raster_pairs(raster, size, steps, name, max_per_step=None):
    if raster.shape[1] != size or raster.shape[0] > steps:
        raise ShapeError(f"{name}: raster has shape {raster.shape}, expected (<= {steps}, {size})",
                         name, raster.shape, (steps, size))
    counts = _int_column(f"{name} raster", raster).reshape(raster.shape)
    if counts.size and counts.min() < 0:
        raise EventError(f"{name}: raster contains {int(counts.min())}; event counts must be >= 0", name,
                         int(counts.min()), (0, None))
    if max_per_step is not None and counts.size:
        # a cell larger than the queue would also overflow the row sum: check cells first
        per_step = counts.max(axis=1) if counts.max() > max_per_step else counts.sum(axis=1)
        if per_step.max() > max_per_step:
            step = int(np.argmax(per_step))
            raise EventError(f"{name}: step {step} has {int(per_step[step])} or more input events; the chip's "
                             f"input queue holds {max_per_step}", name, int(per_step[step]), (0, max_per_step))
    t, idx = np.nonzero(counts)
    reps = counts[t, idx]
    return np.repeat(t, reps), np.repeat(idx, reps)


@dataclass
class RunResult:
    """Spikes of the recorded populations over one run (steps relative to the run's start)."""
    steps: int
    start: int                          #: the chip's absolute step at the start of the run
    recorded: list
    _spikes: dict = field(repr=False)   # population -> (E, 2) int64 (step, index)
    input_events: int = 0
    wall_time: float = 0.0
    raw: np.ndarray = field(repr=False, default=None)   #: (S, 3) (absolute step, core, neuron)

    def _pop(self, population):
        if population not in self._spikes:
            raise ValidationError(f"{population!r} was not recorded in this run", "population", population,
                                  tuple(self._spikes))
        return population

    def spikes(self, population):
        """(E, 2) int64 array of (step, index), in step order."""
        return self._spikes[self._pop(population)]

    __getitem__ = spikes

    def raster(self, population):
        """Dense (steps, size) int array: 1 where the neuron spiked."""
        s = self.spikes(population)
        out = np.zeros((self.steps, population.size), dtype=np.int64)
        np.add.at(out, (s[:, 0], s[:, 1]), 1)
        return out

    def counts(self, population):
        """Spikes per neuron over the run."""
        s = self.spikes(population)
        return np.bincount(s[:, 1], minlength=population.size)

    def total_spikes(self):
        return sum(len(s) for s in self._spikes.values())


class Chip:
    """A chip behind a :class:`Backend`; use :meth:`Chip.open`."""

    def __init__(self, backend):
        if not isinstance(backend, Backend):
            raise ValidationError(f"backend must be a neurofabric.host.backend.Backend, not {backend!r}",
                                  "backend", backend, ("Backend",))
        self.backend = backend
        self.info = backend.identify()
        self.compiled = None
        self._encoding = None           # the encode() call to rewind to on reset_state
        self._encoder_left = None       # steps before the encoder turns itself off (None: no limit)
        self._encoder_words = {}        # what the chip's encoder memory and register hold, if known

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, device="model", **options):
        """Open `device`: ``"model"`` (the numpy model; option ``shape=ChipShape(...)``),
        ``"sim"`` (the Verilator sim device; options go to ``SimDevice``), or a URL
        ``"serial:///dev/ttyUSB1"`` / ``"socket://HOST:PORT"`` (options go to the link)."""
        return cls(open_backend(device, **options))

    def close(self):
        """Close the device (stop the sim device, close the port). Closing again does nothing."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- loading ------------------------------------------------------------------------------
    def compile(self, network, record=None):
        """Compile `network` for this chip without sending anything (see :mod:`compiler`).
        Refuses (CapacityError) a network that needs what the chip lacks: learning on a chip
        whose IDENTIFY reports none, or more cores, neurons, axons or route entries than it has
        (the message names a shape that fits and how to ask for it)."""
        if not isinstance(network, Network):
            raise ValidationError(f"network must be a Network, not {network!r}", "network", network, ("Network",))
        plastic = [c for c in network.connections if c.plastic is not None]
        if plastic and not self.info.learning:
            raise CapacityError(f"the network has {len(plastic)} plastic connection(s) (plastic=STDP(...)), but "
                                f"this chip ({self.info.build or 'version ' + str(self.info.version)}) has no "
                                "learning cores (IDENTIFY reports learning = False): it would load and never "
                                "learn. Use a learning build (\"model\", \"sim\", or a board built with "
                                "learning) or connect without plastic=", "learning", False, (True,))
        try:
            return compile_network(network, self.info, record=record)
        except CapacityError as e:
            hint = _shape_hint(network, self.info, record)
            if hint is None:
                raise
            raise CapacityError(f"{e}; {hint}", e.field, e.value, e.allowed) from e

    def load(self, network, record=None, progress=None):
        """Compile and write `network` to the chip, replacing what was loaded, and zero the
        neuron state; spikes in flight from a previous network are dropped (this takes one time
        step). `record`: populations routed to the host (default: all). Returns the
        :class:`CompiledNetwork` (placement and quantisation report)."""
        compiled = self.compile(network, record=record)
        self.compiled = None        # a write that fails half-way leaves no network loaded, not a stale one
        writes = _load_order(compiled.writes)
        with Progress(sum(len(w.words) for w in writes), "load", progress) as bar:
            for i, w in enumerate(writes):
                try:
                    self.backend.write(w.space, w.core, w.addr, w.words)
                except Exception as e:
                    e.add_note(f"Chip.load failed at write {i + 1} of {len(writes)} ({w.space.name}, core "
                               f"{w.core}, address {w.addr}): no network is loaded now; Chip.load(network) "
                               "again starts from scratch")
                    raise
                bar.update(len(w.words))
        self.compiled = compiled
        self._encoding = self._encoder_left = None
        if self.info.encoder_channels:
            self._encoder_write_register(ChipRegister.ENCODER, 0)
        self._extent = {}
        for s in compiled.slices:
            self._extent[s.core] = max(self._extent.get(s.core, 0), s.offset + s.stop - s.start)
        # spikes of the previous network may still be in flight: let them land on a quiet chip
        self._step = self.step()
        self._settle({core: self.info.neurons for core in range(self.info.cores)})
        return compiled

    def _need(self):
        if self.compiled is None:
            raise ValidationError("no network is loaded: call Chip.load(network) first", "network", None,
                                  ("a network loaded with Chip.load",))
        return self.compiled

    def step(self):
        """The chip's current time step (the next one to run)."""
        return int(self.backend.read(MemorySpace.CHIP, 0, ChipRegister.STEP.value, 1)[0])

    # --- running ------------------------------------------------------------------------------
    def _events(self, inputs, steps, dt):
        compiled = self._need()
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise ValidationError(f"inputs must be a dict {{input population: events}}, not {type(inputs).__name__}",
                                  "inputs", inputs, ("dict",))
        blocks = []
        for pop, events in inputs.items():
            pop = _input_population(compiled, pop)
            pairs = parse_events(events, pop.size, steps, dt, name=f"inputs[{pop.name!r}]",
                                 max_per_step=self.info.input_queue or UNREPORTED_INPUT_QUEUE)
            for core, base in compiled.input_axons[pop]:
                rows = np.empty((len(pairs), 3), dtype=np.int64)
                rows[:, 0], rows[:, 1], rows[:, 2] = pairs[:, 0], core, base + pairs[:, 1]
                blocks.append(rows)
        if not blocks:
            return np.zeros((0, 3), dtype=np.int64)
        rows = np.concatenate(blocks)
        return rows[np.argsort(rows[:, 0], kind="stable")]

    def _recorded(self, record):
        compiled = self._need()
        if record is None:
            return [p for p in compiled.network.populations if p in compiled.recorded]
        names = {p.name: p for p in compiled.recorded}
        allowed = tuple(p.name for p in compiled.network.populations if p in compiled.recorded)
        if isinstance(record, (Population, str)):
            record = [record]
        elif not isinstance(record, (list, tuple)):
            raise ValidationError(f"record must be a population, its name, or a list of them, not {record!r}",
                                  "record", record, allowed)
        out = []
        for p in record:
            key = names.get(p, p) if isinstance(p, str) else p
            if not isinstance(key, Population) or key not in compiled.recorded:
                raise ValidationError(f"record: {p!r} is not routed to the host: allowed "
                                      f"{', '.join(map(repr, allowed))} (pass record=[...] to Chip.load to route "
                                      "others)", "record", p, allowed)
            out.append(key)
        return out

    def run(self, inputs=None, steps=1, record=None, dt=1.0, progress=None, chunk=None):
        """Run `steps` time steps with `inputs` ({input population: events}, formats in the
        module docstring); return a :class:`RunResult` for the populations in `record`
        (default: every population routed to the host)."""
        steps = check_int("steps", steps, 1, (1 << 31) - 1)
        recorded = self._recorded(record)
        events = self._events(inputs, steps, dt)
        show = progress if progress is not None else (None if steps >= 20000 else False)
        results = list(self._chunks(events, steps, recorded, chunk, Progress(steps, "run", show)))
        return _merge(results, steps)

    def stream(self, inputs=None, steps=1, record=None, dt=1.0, chunk=1024, progress=None):
        """Like :meth:`run`, but yields one :class:`RunResult` per `chunk` steps (steps
        relative to each chunk's start), so long runs need not hold all spikes in memory.
        Inputs are validated in full before the first step runs."""
        steps = check_int("steps", steps, 1, (1 << 31) - 1)
        chunk = min(check_int("chunk", chunk, 1, (1 << 31) - 1), steps)
        recorded = self._recorded(record)
        events = self._events(inputs, steps, dt)
        return self._chunks(events, steps, recorded, chunk, Progress(steps, "stream", progress))

    def _chunks(self, events, steps, recorded, chunk, bar):
        """Inject and run in pieces that respect the chip's input queue; yield RunResults."""
        queue = self.info.input_queue or UNREPORTED_INPUT_QUEUE
        chunk = steps if chunk is None else chunk
        start = self._step
        with bar:
            done, pos = 0, 0
            while done < steps:
                # as many steps as fit: at most `chunk`, and at most `queue` events in flight
                end = min(steps, done + chunk, done + MAX_CHUNK_STEPS)
                if bar.enabled:
                    end = min(end, done + max(1, steps // 100))
                upto = np.searchsorted(events[:, 0], end, side="left")
                if upto - pos > queue:
                    # cut at the step of the queue-th event (at least one step)
                    end = max(done + 1, int(events[pos + queue, 0]))
                    upto = np.searchsorted(events[:, 0], end, side="left")
                    if upto - pos > queue:
                        raise EventError(f"step {done} has {upto - pos} input events; the chip's input "
                                         f"queue holds {queue}", "inputs", upto - pos, (0, queue))
                t0 = time.perf_counter()
                piece = events[pos:upto].copy()
                piece[:, 0] += start
                if len(piece):
                    self.backend.inject(piece)
                raw = np.asarray(self.backend.run(end - done), dtype=np.int64).reshape(-1, 3)
                raw = raw[np.lexsort((raw[:, 2], raw[:, 1], raw[:, 0]))]    # one order: (step, core, neuron)
                self._encoder_ran(end - done)
                wall = time.perf_counter() - t0
                spikes = self._decode(raw, start + done, recorded)
                yield RunResult(end - done, start + done, recorded, spikes, int(upto - pos), wall, raw)
                bar.update(end - done)
                pos, done = upto, end
            self._step = start + steps

    def _decode(self, raw, start, recorded):
        c = self.compiled
        out = {}
        if len(raw):
            pop_ids = c.population_of[raw[:, 1], raw[:, 2]]
            index = c.index_of[raw[:, 1], raw[:, 2]]
        for p in recorded:
            if len(raw):
                sel = pop_ids == p.id
                out[p] = np.stack([raw[sel, 0] - start, index[sel]], axis=1)
            else:
                out[p] = np.zeros((0, 2), dtype=np.int64)
        return out

    def reset_state(self):
        """Return the loaded network to rest between independent runs: zero u, v, theta and the
        STDP traces, and drop spikes in flight. The chip keeps its configuration and weights.

        How: every used neuron is made refractory for one step with zero state, one step runs
        (spikes already routed to it are integrated into u but cannot fire anything; learning is
        paused), then the state is zeroed again. The chip's step counter advances by one."""
        self._need()
        self._settle(self._extent)
        self._encoder_rewind()

    def _settle(self, extent):
        """Make the neurons in `extent` ({core: neuron count}) refractory with zero state, run one
        step with learning paused, zero their state and the traces again."""
        compiled = self.compiled
        learning = compiled.plastic_cores and int(
            self.backend.read(MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, 1)[0])
        if learning:
            self.backend.write(MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, [0])
        register = self._encoder_words.get("encoder")
        if register is None and self.info.encoder_channels:
            register = 1                                    # unknown: make sure it is off
        if register is not None and register & 1:           # no encoder input in the settling step
            self._encoder_write_register(ChipRegister.ENCODER, register & ~1)
        for core, n in extent.items():
            words = np.zeros(STATE_WORDS * n, dtype=np.int64)
            words[StateField.REFRACTORY.value::STATE_WORDS] = 1
            self.backend.write(MemorySpace.STATE, core, 0, words)
        self.backend.run(1)
        for core, n in extent.items():
            self.backend.write(MemorySpace.STATE, core, 0, np.zeros(STATE_WORDS * n, dtype=np.int64))
        for core in compiled.plastic_cores:
            self.backend.write(MemorySpace.TRACE, core, 0, np.zeros(self.info.axons + self.info.neurons,
                                                                     dtype=np.int64))
        if learning:
            self.backend.write(MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, [1])
        self._step += 1

    # --- the on-chip input encoder --------------------------------------------------------------
    def encode(self, inputs, mode="phase", phase=0.5, levels=256, seed=1, steps=None):
        """Load input intensities into the chip's input encoder (docs/host.md, "On-chip input
        encoder"): from the next :meth:`run` on, the chip makes the input spikes of these
        populations itself, in every step, or in the first `steps` steps run (then it stops),
        in addition to any events given to :meth:`run` (the chip counts the steps and turns the
        encoder off itself, ``ChipRegister.ENCODER_STEPS``). :meth:`reset_state` rewinds the
        encoder to this call (phases, LFSR seed, `steps`); :meth:`load` and
        :meth:`stop_encoding` stop it.

        `inputs`: {input population (or its name): intensities}, one number in [0, 1] per input
        neuron; `steps`: None (no limit) or 1..65535. `mode`: ``"phase"``, the deterministic phase accumulator, which gives exactly
        the spikes of ``rate_encode(x, T, levels, phase)`` (`levels` a power of two); or
        ``"bernoulli"``, a spike with probability x in every step from the chip's LFSR seeded
        with `seed` (16-bit). Each input neuron uses one encoder channel per core it feeds.
        Everything is validated before any byte is sent. Returns the number of channels used."""
        compiled = self._need()
        channels = self.info.encoder_channels
        if not channels:
            raise CapacityError("this chip has no input encoder (IDENTIFY reports encoder_channels = 0); "
                                  "give input events to Chip.run instead", "encoder_channels", 0, (1, None))
        if mode not in ("phase", "bernoulli"):
            raise ValidationError(f"mode = {mode!r} is not an encoder mode: allowed 'phase', 'bernoulli'",
                                  "mode", mode, ("phase", "bernoulli"))
        if not isinstance(inputs, dict) or not inputs:
            raise ValidationError(f"inputs must be a non-empty dict {{input population: intensities}}, not "
                                  f"{inputs!r}", "inputs", inputs, ("non-empty dict",))
        seed = check_int("seed", seed, 0, (1 << LFSR_BITS) - 1)
        if steps is not None:
            steps = check_int("steps", steps, 1, (1 << 16) - 1)
        values = {}
        for pop, x in inputs.items():
            pop = _input_population(compiled, pop)
            if pop in values:
                raise ValidationError(f"inputs names {pop!r} twice", "inputs", pop, ("each input population once",))
            values[pop] = _intensities(x, pop)
        if mode == "phase":
            words = {p: phase_encoder_words(x, levels, phase) for p, x in values.items()}
        else:
            words = {p: (bernoulli_encoder_words(x), np.zeros(p.size, dtype=np.int64)) for p, x in values.items()}
        layout = encoder_layout(compiled, list(values), channels)
        rates = layout.spread({p: w[0] for p, w in words.items()})
        phases = layout.spread({p: w[1] for p, w in words.items()})
        targets = layout.targets[:, 1] | layout.targets[:, 0] << 16
        encoder_mode = EncoderMode.PHASE if mode == "phase" else EncoderMode.BERNOULLI
        # rates of channels a previous encoding used, and this one does not, go to 0
        rates = np.concatenate([rates, np.zeros(max(0, self._encoder_words.get("rate_span", channels)
                                                    - len(rates)), dtype=np.int64)])
        self._encoder_write(EncoderField.TARGET, targets)
        self._encoder_write(EncoderField.RATE, rates)
        self._encoder_words["rate_span"] = layout.channels
        if encoder_mode is EncoderMode.PHASE:
            self._encoder_write(EncoderField.PHASE, phases)
        else:
            self.backend.write(MemorySpace.CHIP, 0, ChipRegister.ENCODER_SEED.value, [seed])
        self._encoder_write_register(ChipRegister.ENCODER_STEPS, steps or 0)
        self._encoder_write_register(ChipRegister.ENCODER, 1 | encoder_mode.value << 1)
        self._encoding = {"mode": encoder_mode, "phases": phases, "seed": seed, "steps": steps}
        self._encoder_left = steps
        return layout.channels

    def stop_encoding(self):
        """Stop the input encoder (its channels keep their words)."""
        if self.info.encoder_channels:
            self._encoder_write_register(ChipRegister.ENCODER, (self._encoder_words.get("encoder") or 0) & ~1)
        self._encoding = self._encoder_left = None

    def _encoder_write(self, field_, words):
        """Write one block of the encoder memory from channel 0, unless the chip holds it already."""
        key = field_.name.lower()
        held = self._encoder_words.get(key)
        if held is not None and len(held) >= len(words) and np.array_equal(held[:len(words)], words):
            return
        self._encoder_words[key] = None                 # unknown if the write fails half-way
        self.backend.write(MemorySpace.ENCODER, 0, field_.value * self.info.encoder_channels, words)
        self._encoder_words[key] = np.array(words, dtype=np.int64)

    def _encoder_write_register(self, register, word):
        """Write ChipRegister.ENCODER or ENCODER_STEPS unless the chip holds `word` already."""
        key = register.name.lower()
        if self._encoder_words.get(key) != word:
            self._encoder_words[key] = None
            self.backend.write(MemorySpace.CHIP, 0, register.value, [word])
            self._encoder_words[key] = word

    def _encoder_ran(self, steps):
        """Book-keeping after `steps` steps ran: the phases moved, and the chip counted its
        encoder steps down (turning the encoder off at 0)."""
        register = self._encoder_words.get("encoder")
        if register is None or register & 1:
            self._encoder_words["phase"] = None
        if self._encoder_left is not None and register is not None and register & 1:
            self._encoder_left = max(0, self._encoder_left - steps)
            self._encoder_words["encoder_steps"] = self._encoder_left
            if self._encoder_left == 0:
                self._encoder_words["encoder"] = register & ~1
                self._encoder_left = None

    def _encoder_rewind(self):
        """Back to the state right after the last encode() (after reset_state)."""
        e = self._encoding
        if e is None:
            return
        if e["mode"] is EncoderMode.PHASE:
            self._encoder_write(EncoderField.PHASE, e["phases"])
        else:
            self.backend.write(MemorySpace.CHIP, 0, ChipRegister.ENCODER_SEED.value, [e["seed"]])
        self._encoder_write_register(ChipRegister.ENCODER_STEPS, e["steps"] or 0)
        self._encoder_write_register(ChipRegister.ENCODER, 1 | e["mode"].value << 1)
        self._encoder_left = e["steps"]

    # --- reading back -------------------------------------------------------------------------
    def read_weights(self, connection, raw=False):
        """The weights of `connection` as the chip holds them now, shape (pre.size, post.size):
        in state units (int8 weight << weight_exp), or the int8 values with ``raw=True``."""
        compiled = self._need()
        if not isinstance(connection, Connection) or connection not in compiled.network.connections:
            raise ValidationError(f"{connection!r} is not a connection of the loaded network",
                                  "connection", connection, tuple(compiled.network.connections))
        N = self.info.neurons
        pre, post = connection.pre, connection.post
        out = np.zeros((pre.size, post.size), dtype=np.int64 if raw else np.float64)
        for s in compiled.slices_of(post):
            base = compiled.axon_blocks[(s.core, pre)]
            words = self.backend.read(MemorySpace.WEIGHT, s.core, base * N, pre.size * N).reshape(pre.size, N)
            block = words[:, s.offset:s.offset + s.stop - s.start]
            out[:, s.start:s.stop] = block if raw else block * float(1 << compiled.weight_exp[s.core])
        return out

    def read_state(self, population):
        """The state of `population`'s neurons: dict of u, v, refractory, theta arrays."""
        compiled = self._need()
        if population not in compiled.network.populations or population.is_input:
            raise ValidationError(f"{population!r} is not a neuron population of the loaded network",
                                  "population", population,
                                  tuple(p for p in compiled.network.populations if not p.is_input))
        out = {k: np.zeros(population.size, dtype=np.int64) for k in ("u", "v", "refractory", "theta")}
        for s in compiled.slices_of(population):
            words = self.backend.read(MemorySpace.STATE, s.core, s.offset * STATE_WORDS,
                                      (s.stop - s.start) * STATE_WORDS).reshape(-1, STATE_WORDS)
            for f in StateField:
                out[f.name.lower()][s.start:s.stop] = words[:, f.value]
        return out

    # --- learning -----------------------------------------------------------------------------
    def set_learning(self, enabled):
        """Enable or pause STDP on the whole chip (plastic connections keep their settings)."""
        if not isinstance(enabled, (bool, np.bool_)):
            raise ValidationError(f"enabled must be True or False, not {enabled!r}", "enabled", enabled, (True, False))
        self.backend.write(MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, [int(enabled)])

    def set_plastic(self, connection, enabled):
        """Turn learning of one plastic connection on or off (its axons' PLASTIC bits)."""
        compiled = self._need()
        if not isinstance(connection, Connection) or connection not in compiled.network.connections:
            raise ValidationError(f"{connection!r} is not a connection of the loaded network",
                                  "connection", connection, tuple(compiled.network.connections))
        if connection.plastic is None:
            raise ValidationError(f"{connection!r} was not created with plastic=STDP(...)", "connection", connection,
                                  tuple(c for c in compiled.network.connections if c.plastic is not None))
        if not isinstance(enabled, (bool, np.bool_)):
            raise ValidationError(f"enabled must be True or False, not {enabled!r}", "enabled", enabled, (True, False))
        for s in compiled.slices_of(connection.post):
            base = compiled.axon_blocks[(s.core, connection.pre)]
            self.backend.write(MemorySpace.PLASTIC, s.core, base, [int(bool(enabled))] * connection.pre.size)

    def set_reward(self, reward):
        """The third factor multiplying every STDP update (signed 8-bit; 1 = plain STDP,
        0 = no change, negative = anti-Hebbian)."""
        reward = check_int("reward", reward, -128, 127)
        self.backend.write(MemorySpace.CHIP, 0, ChipRegister.REWARD.value, [reward])

    def stats(self):
        """The chip's event counters as {name: value} (32-bit, wrapping)."""
        words = self.backend.read(MemorySpace.COUNTER, 0, 0, len(Counter))
        return {c.name.lower(): int(words[c.value]) for c in Counter}


def _intensities(x, pop):
    """One population's encoder intensities as float64, validated: shape (pop.size,), finite,
    in [0, 1]."""
    name = f"inputs[{pop.name!r}]"
    array = np.asarray(x)
    if array.dtype.kind not in "iubf":
        raise ShapeError(f"{name} must hold numbers in [0, 1], got dtype {array.dtype}", name, array.dtype,
                         ("integer", "float"))
    if array.shape != (pop.size,):
        raise ShapeError(f"{name} has shape {array.shape}, expected ({pop.size},): one intensity per input "
                         "neuron", name, array.shape, (pop.size,))
    array = array.astype(np.float64)
    bad = ~((array >= 0) & (array <= 1))           # NaN compares false: caught here too
    if np.any(bad):
        at = int(np.flatnonzero(bad)[0])
        text = "NaN" if np.isnan(array[at]) else array[at]
        raise RangeError(f"{name} contains {text}, out of range: allowed [0, 1] (at position {at})", name,
                         float(array[at]), (0, 1))
    return array


def _input_population(compiled, key):
    """The input population an `inputs` key names (the population or its name) in the loaded
    network; ValidationError for anything else."""
    if isinstance(key, str):
        key = next((p for p in compiled.network.populations if p.name == key), key)
    if not isinstance(key, Population) or key not in compiled.input_axons:
        raise ValidationError(f"inputs key {key!r} is not an input population of the loaded network",
                              "inputs", key, tuple(compiled.input_axons))
    return key


def _load_order(writes):
    """The compiled writes in an order every chip state accepts: each STDP block is preceded by
    the widest weight bounds (w_min = -128, then w_max = 127), so a new w_min above the w_max the
    previous network left (or a new w_max below its w_min) is never checked against it."""
    out = []
    for w in writes:
        if w.space is MemorySpace.STDP and w.addr <= StdpField.W_MAX.value:
            out.append(MemoryWrite(MemorySpace.STDP, w.core, StdpField.W_MIN.value, np.array([WEIGHT_MIN])))
            out.append(MemoryWrite(MemorySpace.STDP, w.core, StdpField.W_MAX.value, np.array([WEIGHT_MAX])))
        out.append(w)
    return out


#: shapes tried, in order, when a network does not fit: grow neurons and axons, then cores
_HINT_SIZES = (64, 128, 256, 512, 1024)


def _shape_hint(network, info, record):
    """A sentence naming the smallest shape (of a few tried) the network compiles onto, and how
    to ask for it; None if none of them fits."""
    for cores in range(info.cores, 17):
        for size in _HINT_SIZES:
            if size < max(info.neurons, info.axons) and cores == info.cores:
                continue
            neurons, axons = max(size, info.neurons), max(size, info.axons)
            trial = replace(info, cores=cores, neurons=neurons, axons=axons,
                            route_entries=max(info.route_entries, 4 * cores * neurons))
            try:
                compile_network(network, trial, record=record)
            except ValidationError:
                continue
            shape = (f"ChipShape(cores={cores}, neurons={neurons}, axons={axons}, lanes={info.lanes}, "
                     f"route_entries={trial.route_entries}, encoder_channels={info.encoder_channels})")
            return (f"it fits {shape}: ask for it with Chip.open(\"model\", shape=...) or Chip.open(\"sim\", "
                    "shape=...), or build a board with that shape (docs/host.md, \"Chip shapes\")")
    return None


def _merge(results, steps):
    if len(results) == 1:
        return results[0]
    first = results[0]
    spikes = {}
    for p in first.recorded:
        parts = []
        for r in results:
            s = r.spikes(p).copy()
            s[:, 0] += r.start - first.start
            parts.append(s)
        spikes[p] = np.concatenate(parts)
    raw = np.concatenate([r.raw for r in results])
    return RunResult(steps, first.start, first.recorded, spikes, sum(r.input_events for r in results),
                     sum(r.wall_time for r in results), raw)


#: how long opening a serial port waits for the chip's first reply: 3 tries of 1 s
OPEN_TIMEOUT, OPEN_RETRIES = 1.0, 2


def open_backend(device="model", **options):
    """The :class:`Backend` for a device name or URL (see :meth:`Chip.open`). Named devices
    ("model", "sim", ...) come from the backend registry (:mod:`neurofabric.host.backend`)."""
    if not isinstance(device, str):
        raise ValidationError(f"device must be a string ('model', 'sim' or a URL), not {device!r}", "device",
                              device, (*backend_names(), "serial://PORT", "socket://HOST:PORT"))
    if not device.startswith(("serial://", "socket://")):
        return open_named_backend(device, **options)
    from neurofabric.host.link import LinkBackend, LinkError
    from neurofabric.host.transport import SerialTransport, TransportError
    check_options(device, options, {"baudrate", "write_timeout", "timeout", "retries", "build", "poll_interval"})
    transport_options = {k: options.pop(k) for k in ("baudrate", "write_timeout") if k in options}
    try:
        transport = SerialTransport(device, **transport_options)
    except TransportError as e:
        raise DeviceUnavailable(f"{device!r} cannot be opened: {e.__cause__ or e}; is the board plugged in "
                                "and the path right (ls /dev/ttyUSB* /dev/ttyACM*)?") from e
    retries = options.pop("retries", None)
    timeout = options.pop("timeout", None)
    try:
        backend = LinkBackend(transport, timeout=OPEN_TIMEOUT if timeout is None else timeout,
                              retries=OPEN_RETRIES if retries is None else retries, **options)
    except LinkError as e:
        transport.close()
        rate = transport_options.get("baudrate", 3_000_000)
        raise DeviceUnavailable(f"{device!r} opened, but no chip answers on it ({e}); is the bitstream loaded "
                                f"(neurofabric program --board NAME), and does the board's UART run at "
                                f"baudrate={rate}?") from e
    except BaseException:
        transport.close()
        raise
    # the first contact uses few retries so that a silent port fails fast; the link keeps its own
    if retries is None:
        backend.retries = LinkBackend.__init__.__kwdefaults__["retries"]
    if timeout is None:
        backend.timeout = LinkBackend.__init__.__kwdefaults__["timeout"]
    return backend
