"""The neuron core: event-driven synaptic integration and a pipelined CUBA-LIF update sweep.

One :class:`NeuronCore` holds `neurons` neurons time-multiplexed over block RAM, `axons` input
axons and a dense ``axons x neurons`` int8 crossbar packed `lanes` weights per memory word. It
computes exactly what :meth:`neurofabric.host.model.ChipModel.step` computes for one core
(docs/core.md describes its components and their cycle behaviour; docs/semantics.md the
arithmetic). With ``learning=True`` it also runs the model's STDP learning phase after each
update sweep (docs/learning_hw.md).

The core is four components: the :class:`~neurofabric.hdl.integrator.Integrator`, the
:class:`~neurofabric.hdl.sweep.UpdateSweep`, the :class:`~neurofabric.hdl.stdp.StdpEngine`
(with ``learning=True``) and the :class:`~neurofabric.hdl.core_memory.CoreMemoryPort`, which
carries requests to the other three over a :class:`~neurofabric.hdl.core_memory.CoreBus`.
"""

from amaranth import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.core_memory import CoreMemoryPort, MemorySignature
from neurofabric.hdl.integrator import HAZARD_WINDOW, Integrator
from neurofabric.hdl.stdp import STDP_DEFAULTS, StdpEngine, lfsr_seed_value
from neurofabric.hdl.sweep import DEFAULT_THRESHOLD, SPIKE_FIFO_DEPTH, UpdateSweep

__all__ = ["CoreConfigError", "CoreSignature", "NeuronCore", "lfsr_seed_value",
           "DEFAULT_THRESHOLD", "HAZARD_WINDOW", "SPIKE_FIFO_DEPTH", "STDP_DEFAULTS"]


class CoreConfigError(ValueError):
    """A build parameter of :class:`NeuronCore` is out of range."""


def _check_param(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise CoreConfigError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")
    if not lo <= value <= hi:
        raise CoreConfigError(f"{name} = {value} is out of range: allowed [{lo}, {hi}]")
    return value


class CoreSignature(wiring.Signature):
    """The ports of a neuron core of `neurons` neurons and `axons` axons (members from the
    core's side): ``axon_in``, ``spike_out``, ``step``, ``busy``, the memory port ``mem`` /
    ``mem_resp`` (:class:`~neurofabric.hdl.core_memory.MemorySignature`) and, with `learning`,
    ``learn`` and ``reward``. :class:`NeuronCore` describes them; any component with this
    signature can be a core of the :class:`~neurofabric.hdl.chip.Chip`."""

    def __init__(self, neurons, axons, *, learning=False):
        self.neurons, self.axons, self.learning = neurons, axons, learning
        members = {
            "axon_in": In(stream.Signature(range(axons))),
            "spike_out": Out(stream.Signature(range(neurons))),
            "step": In(1),
            "busy": Out(1),
            **MemorySignature().members,
        }
        if learning:
            members.update({"learn": In(1), "reward": In(signed(8))})
        super().__init__(members)

    def __eq__(self, other):
        return (type(other) is type(self)
                and (other.neurons, other.axons, other.learning) == (self.neurons, self.axons, self.learning))

    def __hash__(self):
        return hash((type(self), self.neurons, self.axons, self.learning))


class NeuronCore(CheckedComponent):
    """A CUBA-LIF neuron core (design.md section 5), bit-exact with the model's ``_update``.

    Parameters
    ----------
    neurons : int
        Neurons of the core, 1 .. 65536; a multiple of `lanes`.
    axons : int
        Input axons, 1 .. 65536 (``axons * neurons <= 2**24``, the WEIGHT address space).
    lanes : int
        Weights integrated per cycle (P), a power of two 1 .. 64.
    learning : bool
        Add on-chip trace-based STDP (the model's ``_learn``, docs/learning_hw.md). Without it
        the core is the inference-only build and holds no learning logic at all.
    request_held : bool
        The driver of `mem` keeps ``mem.payload`` unchanged from a request's acceptance until
        its response has been taken (as :class:`~neurofabric.hdl.chip.Chip` does): the core
        then works from ``mem.payload`` and keeps no copy of the request (about 60 flip-flops
        fewer). Default False: the core registers each request.

    Ports
    -----
    axon_in : stream of axon index
        An event for the *next* update. Accepted at one event per ``neurons / lanes`` cycles
        (back-to-back events, also to the same axon, stream at full rate); accepted during the
        update sweep too (those events go to the other accumulator bank). Ready is high while
        idle and in the cycle the previous event's last word issues; a memory request holds it
        low for one cycle. It never depends on `spike_out`.
    spike_out : stream of neuron index
        The neurons that fired in the last update, ascending. Back-pressure stalls the sweep.
    step : 1-cycle pulse
        Every event of this step has been accepted: update every neuron. An event accepted in
        the same cycle as the pulse belongs to the next step. The pulse must not come while a
        sweep is pending or running (an in-RTL assertion checks it); while events are still
        integrating it may (the sweep waits for them).
    busy : output
        High while integrating, sweeping, or holding undelivered spikes.
    learn : input, only with ``learning=True``
        The chip-wide learning switch (``ChipRegister.LEARNING``), sampled at `step`.
    reward : signed 8-bit input, only with ``learning=True``
        The chip-wide third factor (``ChipRegister.REWARD``); read only during the learning phase.
    mem, mem_resp : memory requests and their responses (:class:`MemRequest`)
        Accepted only while the core is idle and no event is offered; exactly one response
        (32 bits) per request, four cycles later at the earliest: the read data, 0 for
        writes and for unknown spaces or addresses (which change nothing).

    Cycle behaviour: an event's weight row streams through a read -> add -> write-back pipeline
    at `lanes` synapses per cycle (latency 4); the update sweep issues one neuron per cycle
    through a 7-stage pipeline: ``neurons + 10`` cycles from `step` to idle when `spike_out`
    keeps up (the sweep holds 15 credits for the 16-entry spike FIFO, so it never overruns it).

    With ``learning=True`` and learning enabled for a step (`learn` and ``CoreRegister.LEARNING``
    at the `step` pulse), `axon_in` is held off from the pulse until the learning phase after the
    sweep has finished, so the next step's events see the learned weights; the spike FIFO then
    holds ``neurons + 1`` entries, so neither the sweep nor the learning phase ever waits on
    `spike_out`. The learning phase after the sweep takes about
    ``3 W + A + rows * W + columns * A + 20`` cycles (``W = neurons / lanes``; `rows`: plastic
    axons with an event, each depressed at `lanes` synapses per cycle; `columns`: words of
    neurons with a spike, each potentiated one axon per cycle for all its fired lanes at once).
    """

    @classmethod
    def check_parameters(cls, neurons, axons, lanes, learning=False, *, request_held=False):
        _check_param("neurons", neurons, 1, 1 << 16)
        _check_param("axons", axons, 1, 1 << 16)
        _check_param("lanes", lanes, 1, 64)
        if lanes & (lanes - 1):
            raise CoreConfigError(f"lanes = {lanes} must be a power of two in [1, 64]")
        if neurons % lanes:
            raise CoreConfigError(f"neurons = {neurons} must be a multiple of lanes = {lanes}")
        if axons * neurons > 1 << 24:
            raise CoreConfigError(
                f"axons * neurons = {axons * neurons} is out of range: allowed [1, {1 << 24}] "
                "(the WEIGHT address space)")
        if not isinstance(learning, bool):
            raise CoreConfigError(f"learning must be True or False, not {learning!r}")
        if not isinstance(request_held, bool):
            raise CoreConfigError(f"request_held must be True or False, not {request_held!r}")

    def __init__(self, neurons, axons, lanes, learning=False, *, request_held=False):
        self.neurons, self.axons, self.lanes, self.learning = neurons, axons, lanes, learning
        self.request_held = request_held
        self.words = neurons // lanes          #: memory words per weight row / accumulator bank
        super().__init__(CoreSignature(neurons, axons, learning=learning))

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory_port = port = CoreMemoryPort(request_held=self.request_held)
        m.submodules.integrator = integrator = Integrator(
            self.neurons, self.axons, self.lanes, learning=self.learning)
        m.submodules.sweep = sweep = UpdateSweep(self.neurons, self.axons, self.lanes, learning=self.learning)
        parts = [integrator, sweep]

        wiring.connect(m, wiring.flipped(self.mem), port.mem)
        wiring.connect(m, port.mem_resp, wiring.flipped(self.mem_resp))
        wiring.connect(m, wiring.flipped(self.axon_in), integrator.axon_in)
        wiring.connect(m, sweep.spike_out, wiring.flipped(self.spike_out))
        wiring.connect(m, sweep.accumulators, integrator.accumulators)
        m.d.comb += [integrator.step.eq(self.step), sweep.step.eq(self.step)]
        busy = integrator.busy | sweep.busy

        if self.learning:
            m.submodules.stdp = stdp = StdpEngine(self.neurons, self.axons, self.lanes)
            parts.append(stdp)
            wiring.connect(m, stdp.weight_update, integrator.weight_update)
            wiring.connect(m, integrator.accepted, stdp.accepted)
            wiring.connect(m, sweep.record, stdp.record)
            m.d.comb += [
                stdp.step.eq(self.step), stdp.learn.eq(self.learn), stdp.reward.eq(self.reward),
                stdp.sweep_bank.eq(integrator.accumulators.bank), stdp.sweep_done.eq(sweep.done),
                integrator.hold.eq(stdp.hold),
            ]
            busy |= stdp.busy

        # every request reaches every component; the one whose space it names answers it
        wiring.connect(m, port.bus, *(part.bus for part in parts))
        read_data = 0
        for part in parts:
            read_data |= part.read_data
        m.d.comb += [
            port.read_data.eq(read_data),
            self.busy.eq(busy),
            port.allow.eq(~busy & ~self.step & ~self.axon_in.valid),
        ]
        return m
