"""Compile a :class:`~neurofabric.host.network.Network` onto a chip's cores.

The result is a list of memory writes in the chip's memory map (``hdl/protocol.py``,
:class:`MemorySpace`) plus the tables the host needs to talk to the loaded network: where each
input channel's axons are, which (core, neuron) is which population neuron, and where each
connection's weights live. Nothing is sent here; :meth:`Chip.load` sends the writes.

Placement (greedy, in the order populations were created):

- a population larger than a core's neuron count is split into slices of at most ``neurons``;
- slices are packed first-fit into cores while the core has neurons, axons and parameter
  profiles left (at most 8 distinct neuron configurations per core); a slice whose population
  has a plastic (STDP) input gets a core of its own, since learning is enabled per core and
  per axon, so that no other population's synapses learn with it;
- every source population (input or neurons) feeding a core gets one contiguous block of that
  core's axons, one axon per source neuron; input events from the host address those axons
  directly (an input channel feeding two cores is sent as two events);
- route tables: per source neuron one entry per destination core (to its axon there) and one
  to the host if the population is recorded.

Quantisation: each core has one weight exponent ``e`` (input = int8 weight << e). The compiler
takes the smallest ``e`` for which the largest weight magnitude into the core fits in 127·2^e,
rounds every weight to the nearest multiple of 2^e and reports, per connection, the effective
scale, how many weights were clipped and how many non-zero weights rounded to zero.
"""

from dataclasses import dataclass, field

import numpy as np

from neurofabric.hdl.memory_map import MEMORY_MAP
from neurofabric.hdl.protocol import (
    PROFILE_COUNT,
    WEIGHT_EXP_MAX,
    CoreRegister,
    MemorySpace,
    RouteKind,
)
from neurofabric.host.lowering import kernel_words
from neurofabric.host.model import NeuronProfile
from neurofabric.host.network import (
    WEIGHT_MAX,
    WEIGHT_MIN,
    CapacityError,
    Network,
    ValidationError,
)

__all__ = ["MemoryWrite", "ConnectionReport", "Slice", "CompiledNetwork", "compile_network",
           "pack_route_entry", "pack_route_pointer", "profile_words", "EncoderLayout", "encoder_layout"]

STATE_WORDS = len(MEMORY_MAP[MemorySpace.STATE].blocks)        #: words per neuron in STATE
PROFILE_WORDS = len(MEMORY_MAP[MemorySpace.PROFILE].blocks)     #: words per profile in PROFILE


@dataclass(frozen=True)
class MemoryWrite:
    """Consecutive 32-bit words written into `space` of `core` from `addr` (signed fields as
    Python/numpy ints; every backend refuses a word out of its memory-map range)."""
    space: MemorySpace
    core: int
    addr: int
    words: np.ndarray = field(repr=False)

    def __repr__(self):
        return f"MemoryWrite({self.space.name}, core={self.core}, addr={self.addr}, n={len(self.words)})"


@dataclass(frozen=True)
class ConnectionReport:
    """What quantisation did to one connection."""
    connection: object
    weight_exp: tuple           #: the exponent of each core the connection lands on
    scale: float                #: state units per int8 step (2**weight_exp; the largest if several)
    clipped: int                #: weights that saturated at the int8 range
    zeroed: int                 #: non-zero weights that rounded to 0
    max_error: float            #: largest |w - quantised w| in state units
    rms_error: float
    synapses: int = 0           #: non-zero weights (dense words: pre.size * post.size)
    kernel_words: int | None = None     #: weights of its structure stored once (e.g. a conv kernel), if any


@dataclass(frozen=True)
class Slice:
    """Neurons ``start .. stop-1`` of `population`, placed on `core` at ``offset ..``."""
    population: object
    start: int
    stop: int
    core: int
    offset: int


def pack_route_entry(kind, core=0, axon=0):
    """The 32-bit word of a route entry (``MEMORY_MAP[MemorySpace.ROUTE_ENTRY]``)."""
    return _ROUTE_ENTRY.pack(kind=int(kind.value), core=core, axon=axon)


def pack_route_pointer(base, count):
    """The 32-bit word of a route pointer (``MEMORY_MAP[MemorySpace.ROUTE_POINTER]``)."""
    return _ROUTE_POINTER.pack(base=base, count=count)


def _record_words(space, record):
    """The words of one record (a NeuronProfile, a StdpConfig) in address order: each block of
    the space's memory map names the record's attribute it holds."""
    values = [getattr(record, block.word.name) for block in MEMORY_MAP[space].blocks
              if hasattr(record, block.word.name)]
    return np.array([int(getattr(v, "value", v)) for v in values], dtype=np.int64)


def profile_words(profile):
    """The 8 PROFILE words of a :class:`NeuronProfile`, in ProfileField order."""
    return _record_words(MemorySpace.PROFILE, profile)


def _stdp_words(config):
    """The STDP words of a :class:`StdpConfig` from address 0 (every StdpField but REWARD,
    the chip's register, which is last)."""
    return _record_words(MemorySpace.STDP, config)


_ROUTE_ENTRY = MEMORY_MAP[MemorySpace.ROUTE_ENTRY].blocks[0].word
_ROUTE_POINTER = MEMORY_MAP[MemorySpace.ROUTE_POINTER].blocks[0].word


@dataclass
class _Core:
    index: int
    neurons_used: int = 0
    slices: list = field(default_factory=list)
    profiles: list = field(default_factory=list)      # NeuronProfile, index = profile id
    axon_blocks: dict = field(default_factory=dict)    # source population -> axon base
    axons_used: int = 0
    exclusive: bool = False


@dataclass
class CompiledNetwork:
    """A network placed on a chip: the writes to load it and the host-side tables."""
    network: Network
    info: object                    #: the ChipInfo compiled for
    writes: list                    #: MemoryWrite, in the order to send them
    slices: list                    #: Slice for every placed population slice
    weight_exp: dict                #: core -> weight exponent
    input_axons: dict               #: input population -> list of (core, axon base)
    axon_blocks: dict               #: (core, source population) -> axon base
    recorded: frozenset             #: populations with routes to the host
    plastic_cores: dict             #: core -> StdpConfig
    reports: list                   #: ConnectionReport per connection
    cores_used: list
    route_entries_used: int
    population_of: np.ndarray = field(repr=False, default=None)   #: (cores, neurons) pop id or -1
    index_of: np.ndarray = field(repr=False, default=None)        #: (cores, neurons) index in pop

    def slices_of(self, population):
        return [s for s in self.slices if s.population is population]

    def summary(self):
        """A human-readable account of placement and quantisation."""
        lines = [f"{len(self.cores_used)} core(s) used of {self.info.cores}; "
                 f"{self.route_entries_used} of {self.info.route_entries} route entries"]
        for s in self.slices:
            lines.append(f"  {s.population.name}[{s.start}:{s.stop}] -> core {s.core} neurons "
                         f"{s.offset}..{s.offset + s.stop - s.start - 1}")
        for r in self.reports:
            c = r.connection
            structure = "" if r.kernel_words is None else (
                f"; from {' > '.join(type(op).__name__ for op in c.structure)}: {r.kernel_words} kernel words")
            lines.append(f"  {c.pre.name} -> {c.post.name}: weight_exp {list(r.weight_exp)} (scale {r.scale:g}), "
                         f"clipped {r.clipped}, zeroed {r.zeroed}, max error {r.max_error:.3g}, "
                         f"{r.synapses} of {c.weights.size} dense words non-zero{structure}")
        return "\n".join(lines)


@dataclass(frozen=True)
class EncoderLayout:
    """Input encoder channels for some input populations of a compiled network: one channel per
    (input neuron, target core), since an input feeding several cores is an event to each.
    Channels are numbered population by population (in the order given), target core by target
    core (as ``CompiledNetwork.input_axons`` lists them), input neuron by input neuron."""
    populations: tuple              #: the input populations, in channel order
    blocks: tuple                   #: per target block: (population, core, axon base, first channel)
    targets: np.ndarray             #: (channels, 2) int64: (core, axon) of each channel

    @property
    def channels(self):
        return len(self.targets)

    def spread(self, values):
        """Per-channel words from per-population arrays ``{population: (size,) array}``."""
        parts = [np.asarray(values[p], dtype=np.int64) for p, _, _, _ in self.blocks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def encoder_layout(compiled, populations, channels_available):
    """The :class:`EncoderLayout` of `populations` (input populations of `compiled`) on a chip
    with `channels_available` encoder channels; :class:`CapacityError` if they need more."""
    blocks, targets, first = [], [], 0
    for pop in populations:
        if pop not in compiled.input_axons:
            raise ValidationError(f"{pop!r} is not an input population of the loaded network", "inputs", pop)
        for core, base in compiled.input_axons[pop]:
            blocks.append((pop, core, base, first))
            targets.extend((core, base + i) for i in range(pop.size))
            first += pop.size
    if first > channels_available:
        raise CapacityError(f"encoder channels: {first} needed (one per input neuron and target core), "
                            f"the chip has {channels_available}: allowed [0, {channels_available}]",
                            "encoder_channels", first, (0, channels_available))
    return EncoderLayout(tuple(populations), tuple(blocks), np.array(targets, dtype=np.int64).reshape(-1, 2))


def _place(network, info):
    """Assign population slices and axon blocks to cores."""
    N, A = info.neurons, info.axons
    incoming = {p: [c for c in network.connections if c.post is p] for p in network.populations}
    cores, slices = [], []

    def new_core(exclusive):
        if len(cores) == info.cores:
            need = sum(-(-p.size // N) for p in network.populations if not p.is_input)
            raise CapacityError(
                f"network needs more than the chip's {info.cores} core(s) ({need} population slice(s) of "
                f"<= {N} neurons; plastic populations take whole cores)", "cores", len(cores) + 1, (1, info.cores))
        core = _Core(len(cores), exclusive=exclusive)
        cores.append(core)
        return core

    for pop in network.populations:
        if pop.is_input:
            continue
        sources = [c.pre for c in incoming[pop]]
        for src in sources:
            if src.size > A:
                raise CapacityError(
                    f"{src.name!r} has {src.size} neurons but a core has only {A} axons: a source "
                    f"population feeding {pop.name!r} must have <= {A} neurons", "pre.size", src.size, (1, A))
        if sum(s.size for s in sources) > A:
            raise CapacityError(f"{pop.name!r} receives from {sum(s.size for s in sources)} source neurons; "
                                f"a core has {A} axons", "axons", sum(s.size for s in sources), (0, A))
        plastic = [c.plastic for c in incoming[pop] if c.plastic is not None]
        if len({p.config() for p in plastic}) > 1:
            raise ValidationError(f"plastic inputs of {pop.name!r} use different STDP settings; a core "
                                  "has one STDP configuration", "plastic", plastic)
        profile = pop.neuron.profile()
        for start in range(0, pop.size, N):
            stop = min(start + N, pop.size)
            n = stop - start
            target = None
            if not plastic:
                for core in cores:
                    if core.exclusive or core.neurons_used + n > N:
                        continue
                    if profile not in core.profiles and len(core.profiles) == PROFILE_COUNT:
                        continue
                    extra = sum(s.size for s in set(sources) if s not in core.axon_blocks)
                    if core.axons_used + extra > A:
                        continue
                    target = core
                    break
            if target is None:
                target = new_core(bool(plastic))
            if profile not in target.profiles:
                target.profiles.append(profile)
            for src in sources:
                if src not in target.axon_blocks:
                    target.axon_blocks[src] = target.axons_used
                    target.axons_used += src.size
            s = Slice(pop, start, stop, target.index, target.neurons_used)
            target.neurons_used += n
            target.slices.append(s)
            slices.append(s)
    return cores, slices


def _exponent(max_abs):
    """The smallest exponent whose int8 range holds `max_abs` (with a relative tolerance of 1e-9,
    so weights that went through float arithmetic, e.g. a NIR round trip, keep their exponent)."""
    for e in range(WEIGHT_EXP_MAX + 1):
        if max_abs <= WEIGHT_MAX * (1 << e) * (1 + 1e-9):
            return e
    return WEIGHT_EXP_MAX


def compile_network(network, info, record=None):
    """Place `network` on a chip described by `info` (:class:`ChipInfo`) and return a
    :class:`CompiledNetwork`. `record`: populations whose spikes go to the host (default: every
    non-input population). Raises :class:`ValidationError` subclasses if it does not fit."""
    if not isinstance(network, Network):
        raise ValidationError(f"network must be a Network, not {network!r}", "network", network)
    pops = [p for p in network.populations if not p.is_input]
    if not pops:
        raise ValidationError("the network has no neuron populations; add one with Network.population()",
                              "network", network)
    if record is None:
        record = pops
    record = list(record)
    for p in record:
        if not isinstance(p, object) or p not in network.populations or p.is_input:
            raise ValidationError(f"record must list neuron populations of this network, not {p!r}", "record", p)
    N, A = info.neurons, info.axons
    cores, slices = _place(network, info)

    # --- weights and exponents per core -------------------------------------------------------
    by_core = {c.index: c for c in cores}
    weight_exp, weights = {}, {}
    for core in cores:
        peak = 0.0
        for s in core.slices:
            for conn in network.connections:
                if conn.post is s.population:
                    peak = max(peak, float(np.abs(conn.weights[:, s.start:s.stop]).max(initial=0.0)))
        weight_exp[core.index] = _exponent(peak)
        weights[core.index] = np.zeros((core.axons_used, N), dtype=np.int64)
    reports = []
    for conn in network.connections:
        exps, clipped, zeroed, errors = [], 0, 0, []
        for s in slices:
            if s.population is not conn.post:
                continue
            e = weight_exp[s.core]
            exps.append(e)
            w = conn.weights[:, s.start:s.stop]
            q_float = np.round(w / (1 << e))
            q = np.clip(q_float, WEIGHT_MIN, WEIGHT_MAX).astype(np.int64)
            clipped += int(np.count_nonzero(q != q_float))
            zeroed += int(np.count_nonzero((q == 0) & (w != 0)))
            errors.append((w - q * (1 << e)).ravel())
            base = by_core[s.core].axon_blocks[conn.pre]
            weights[s.core][base:base + conn.pre.size, s.offset:s.offset + s.stop - s.start] = q
        err = np.concatenate(errors) if errors else np.zeros(1)
        reports.append(ConnectionReport(conn, tuple(exps), float(1 << max(exps)), clipped, zeroed,
                                        float(np.abs(err).max(initial=0.0)), float(np.sqrt(np.mean(err ** 2))),
                                        int(np.count_nonzero(conn.weights)),
                                        None if conn.structure is None else kernel_words(conn.structure)))

    # --- routes -------------------------------------------------------------------------------
    recorded = frozenset(record)
    destinations = {}   # source population -> [(core, axon base)]
    for core in cores:
        for src, base in core.axon_blocks.items():
            destinations.setdefault(src, []).append((core.index, base))
    pointers = np.zeros(info.cores * N, dtype=np.int64)
    entries = []
    for s in slices:
        dests = destinations.get(s.population, [])
        for i in range(s.start, s.stop):
            row = [pack_route_entry(RouteKind.AXON, core, base + i) for core, base in dests]
            if s.population in recorded:
                row.append(pack_route_entry(RouteKind.HOST))
            if len(row) > 255:
                raise CapacityError(f"{s.population.name}[{i}] needs {len(row)} route entries, allowed 0..255",
                                    "route count", len(row), (0, 255))
            if row:
                pointers[s.core * N + s.offset + i - s.start] = pack_route_pointer(len(entries), len(row))
                entries.extend(row)
    if len(entries) > info.route_entries:
        raise CapacityError(f"route table needs {len(entries)} entries, the chip has {info.route_entries}",
                            "route entries", len(entries), (0, info.route_entries))

    # --- the writes ---------------------------------------------------------------------------
    writes = []
    population_of = np.full((info.cores, N), -1, dtype=np.int64)
    index_of = np.zeros((info.cores, N), dtype=np.int64)
    plastic_cores = {}
    for core_index in range(info.cores):
        core = by_core.get(core_index)
        neuron_words = np.zeros(N, dtype=np.int64)
        plastic = np.zeros(A, dtype=np.int64)
        learning = 0
        if core is not None:
            for s in core.slices:
                local = slice(s.offset, s.offset + s.stop - s.start)
                pid = core.profiles.index(s.population.neuron.profile())
                neuron_words[local] = (s.population.bias[s.start:s.stop] & 0xFFFFFF) | pid << 24
                population_of[core_index, local] = s.population.id
                index_of[core_index, local] = np.arange(s.start, s.stop)
            for conn in network.connections:
                if conn.plastic is not None and conn.post in {s.population for s in core.slices}:
                    base = core.axon_blocks[conn.pre]
                    plastic[base:base + conn.pre.size] = 1
                    plastic_cores[core_index] = conn.plastic.config()
                    learning = 1
            if core.axons_used:
                writes.append(MemoryWrite(MemorySpace.WEIGHT, core_index, 0, weights[core_index].ravel()))
            writes.append(MemoryWrite(MemorySpace.CORE, core_index, CoreRegister.WEIGHT_EXP.value,
                                      np.array([weight_exp[core_index]], dtype=np.int64)))
            if learning:
                writes.append(MemoryWrite(MemorySpace.STDP, core_index, 0, _stdp_words(plastic_cores[core_index])))
            writes.append(MemoryWrite(MemorySpace.PLASTIC, core_index, 0, plastic))
            writes.append(MemoryWrite(MemorySpace.TRACE, core_index, 0, np.zeros(A + N, dtype=np.int64)))
        # every profile slot of every core, so nothing depends on the memories' power-up contents
        profiles = list(core.profiles) if core is not None else []
        profiles += [NeuronProfile()] * (PROFILE_COUNT - len(profiles))
        writes.append(MemoryWrite(MemorySpace.PROFILE, core_index, 0,
                                  np.concatenate([profile_words(p) for p in profiles])))
        writes.append(MemoryWrite(MemorySpace.NEURON, core_index, 0, neuron_words))
        writes.append(MemoryWrite(MemorySpace.CORE, core_index, CoreRegister.LEARNING.value,
                                  np.array([learning], dtype=np.int64)))
        writes.append(MemoryWrite(MemorySpace.STATE, core_index, 0, np.zeros(STATE_WORDS * N, dtype=np.int64)))
    if entries:
        writes.append(MemoryWrite(MemorySpace.ROUTE_ENTRY, 0, 0, np.array(entries, dtype=np.int64)))
    writes.append(MemoryWrite(MemorySpace.ROUTE_POINTER, 0, 0, pointers))

    input_axons = {p: destinations.get(p, []) for p in network.populations if p.is_input}
    axon_blocks = {(c.index, src): base for c in cores for src, base in c.axon_blocks.items()}
    return CompiledNetwork(
        network=network, info=info, writes=writes, slices=slices, weight_exp=weight_exp,
        input_axons=input_axons, axon_blocks=axon_blocks, recorded=recorded,
        plastic_cores=plastic_cores, reports=reports, cores_used=[c.index for c in cores],
        route_entries_used=len(entries), population_of=population_of, index_of=index_of)
