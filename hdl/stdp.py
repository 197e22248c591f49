"""The neuron core's STDP engine: the model's ``_learn`` after each update sweep.

:class:`StdpEngine` holds the trace and flag memories, the STDP configuration
(:class:`StdpRegisters`) and the learning-phase sequencer; :class:`WeightUpdatePipeline` updates
weight words through the integrator's :class:`~neurofabric.hdl.integrator.WeightUpdatePort`.
docs/learning_hw.md describes the phase and its cycle counts; docs/semantics.md the arithmetic.
"""

from types import SimpleNamespace

from amaranth import Assert, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from neurofabric.hdl.core_memory import CoreBus, CoreDecoder, core_shape, pipeline_register
from neurofabric.hdl.integrator import AcceptedEvent, WeightUpdatePort
from neurofabric.hdl.memory_map import TraceField
from neurofabric.hdl.protocol import (
    DECAY_BITS,
    DECAY_ONE,
    LFSR_BITS,
    LFSR_TAPS,
    STDP_SHIFT_MAX,
    TRACE_BITS,
    WEIGHT_BITS,
    CoreRegister,
    MemorySpace,
    StdpField,
)
from neurofabric.hdl.sweep import SpikeRecord

__all__ = ["StdpEngine", "StdpRegisters", "WeightUpdatePipeline", "STDP_DEFAULTS", "lfsr_seed_value"]

T = TRACE_BITS
TRACE_MAX = (1 << T) - 1


def lfsr_seed_value(seed, lane):
    """The reset state of lane `lane`'s LFSR for seed `seed` (docs/semantics.md, "Learning")."""
    state = (seed + 0x9E37 * (lane + 1)) & ((1 << LFSR_BITS) - 1)
    return state or 1


#: STDP configuration after reset: the model's default `StdpConfig` (field: (shape, value)).
STDP_DEFAULTS = {
    StdpField.PRE_INCREMENT: (unsigned(TRACE_BITS), 64),
    StdpField.POST_INCREMENT: (unsigned(TRACE_BITS), 64),
    StdpField.PRE_DECAY: (unsigned(DECAY_BITS + 1), 512),
    StdpField.POST_DECAY: (unsigned(DECAY_BITS + 1), 512),
    StdpField.A_PLUS: (unsigned(TRACE_BITS), 16),
    StdpField.A_MINUS: (unsigned(TRACE_BITS), 16),
    StdpField.SHIFT: (unsigned(4), 8),
    StdpField.W_MIN: (signed(WEIGHT_BITS), -(1 << (WEIGHT_BITS - 1))),
    StdpField.W_MAX: (signed(WEIGHT_BITS), (1 << (WEIGHT_BITS - 1)) - 1),
    StdpField.SEED: (unsigned(LFSR_BITS), 1),
}
assert STDP_SHIFT_MAX == (1 << 4) - 1
DECAY_FIELDS = (StdpField.PRE_DECAY, StdpField.POST_DECAY)


def _config_name(field):
    return field.name.lower()


class StdpRegisters(wiring.Component):
    """``MemorySpace.STDP`` (the configuration) and ``CoreRegister.LEARNING`` of a core.

    Every field of :data:`STDP_DEFAULTS` is an output named after it (``a_plus``, ``w_min``,
    ...), with its reset value; the trace decays are also kept as factors 4096 - d
    (``pre_decay_factor``, ``post_decay_factor``; a decay above 4096 is taken as 4096).
    ``learning`` is the core's learning switch; ``reseed`` pulses the cycle after a SEED write.
    ``StdpField.REWARD`` reads ``reward`` (the chip's register, not written here).
    """

    def __init__(self, shape):
        self.shape = shape      #: the core's ChipShape (for the memory map)
        members = {"bus": In(CoreBus()), "read_data": Out(32), "reward": In(signed(8)),
                   "learning": Out(1), "reseed": Out(1)}
        for field, (shape, value) in STDP_DEFAULTS.items():
            members[_config_name(field)] = Out(shape, init=value)
        for field in DECAY_FIELDS:
            members[f"{_config_name(field)}_factor"] = Out(DECAY_BITS + 1, init=DECAY_ONE - STDP_DEFAULTS[field][1])
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus, request = self.bus, self.bus.request
        config = {field: getattr(self, _config_name(field)) for field in STDP_DEFAULTS}
        decoder = CoreDecoder(request, self.shape)
        learning_hit = decoder.register_hit(MemorySpace.CORE, CoreRegister.LEARNING)
        stdp_hit = decoder.hit(MemorySpace.STDP)
        stdp_field = request.addr[:ceil_log2(decoder.size(MemorySpace.STDP))]

        def case(field):
            return m.Case(decoder.address(MemorySpace.STDP, field))
        write = bus.access & request.write
        m.d.sync += self.reseed.eq(0)            # set by a SEED write below
        with m.If(write & learning_hit):
            m.d.sync += self.learning.eq(request.data[0])
        with m.If(write & stdp_hit):
            with m.Switch(stdp_field):
                for field, register in config.items():
                    with case(field):
                        if field in DECAY_FIELDS:
                            value = Mux(request.data > DECAY_ONE, DECAY_ONE, request.data[:DECAY_BITS + 1])
                            factor = getattr(self, f"{_config_name(field)}_factor")
                            m.d.sync += factor.eq(DECAY_ONE - value)
                        else:
                            value = request.data[:len(register)]
                        m.d.sync += register.eq(value)
                        if field is StdpField.SEED:
                            m.d.sync += self.reseed.eq(1)
                # StdpField.REWARD is the chip's register (the `reward` port): not written here
        with m.If(~request.write):
            with m.If(learning_hit):
                m.d.comb += self.read_data.eq(self.learning)
            with m.If(stdp_hit):
                with m.Switch(stdp_field):
                    for field, register in config.items():
                        with case(field):
                            m.d.comb += self.read_data.eq(register)      # sign-extends w_min, w_max
                    with case(StdpField.REWARD):
                        m.d.comb += self.read_data.eq(self.reward)
        return m


class WeightUpdatePipeline(wiring.Component):
    """Depresses or potentiates the lanes `mask` of weight word `addr` (one word per cycle).

    Stages: issue (``issue``: read the weight word and, by the caller, its traces); 1: memory
    data out (``pre``, ``post``, ``plastic`` are the trace memories' outputs); 2: registered
    data, the updated lanes step their LFSRs; 3: ``|a R| * trace``, draw & mask; 4: + draw;
    5: ``>> shift`` (saturated at 255, which clips the same); then ``clip(w -/+ dw, w_min,
    w_max)`` is written back (only the updated lanes; a potentiation leaves non-plastic axons
    alone). ``running``: an update is in stages 1..5. ``reseed`` reloads every lane's LFSR from
    ``seed`` in the next cycle.
    """

    def __init__(self, depth, lanes):
        self.depth, self.lanes = depth, lanes
        super().__init__({
            "issue": In(1), "addr": In(range(depth)), "potentiate": In(1), "mask": In(lanes),
            "pre": In(T), "post": In(data.ArrayLayout(unsigned(T), lanes)), "plastic": In(1),
            "a_plus": In(T), "a_minus": In(T), "shift": In(4),
            "w_min": In(signed(WEIGHT_BITS)), "w_max": In(signed(WEIGHT_BITS)),
            "reward": In(signed(8)), "seed": In(LFSR_BITS), "reseed": In(1),
            "weight_update": Out(WeightUpdatePort(depth, lanes)),
            "running": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        lfsr = [Signal(LFSR_BITS, init=lfsr_seed_value(STDP_DEFAULTS[StdpField.SEED][1], lane),
                       name=f"lfsr{lane}") for lane in range(P)]

        def pipe(name, value, shape=None):
            return pipeline_register(m, f"rmw_{name}", value, shape)

        # amplitude * reward, per phase (registered: config and reward are quasi-static)
        def amplitude(a, name):
            product = Signal(signed(2 * T + 1), name=f"{name}_reward")
            m.d.sync += product.eq(a * self.reward)
            negative = Signal(name=f"{name}_negative")
            magnitude = Signal(2 * T - 1, name=f"{name}_magnitude")    # |a * R| <= 255 * 128
            m.d.sync += [negative.eq(product < 0), magnitude.eq(Mux(product < 0, -product, product))]
            return negative, magnitude
        neg_minus, mag_minus = amplitude(self.a_minus, "a_minus")
        neg_plus, mag_plus = amplitude(self.a_plus, "a_plus")
        round_mask = Signal(STDP_SHIFT_MAX)
        m.d.comb += round_mask.eq((Const(1, STDP_SHIFT_MAX + 1) << self.shift) - 1)

        valid, address = [self.issue], [self.addr]
        for k in range(1, 6):
            valid.append(pipe(f"valid{k}", valid[-1]))
            address.append(pipe(f"addr{k}", address[-1]))
        m.d.comb += self.running.eq(Cat(*valid[1:]).any())
        pot2 = pipe("potentiate2", pipe("potentiate1", self.potentiate))
        mask2 = pipe("mask2", pipe("mask1", self.mask))

        # stage 1 -> 2: the memory outputs go straight into registers; stage 2: the lanes to update
        weights = {2: self.weight_update.weights}   # the integrator's stage-2 register of the word
        pre2, post2, plastic2 = pipe("pre2", self.pre), pipe("post2", self.post), pipe("plastic2", self.plastic)
        enable = {2: Signal(P, name="rmw_enable2")}
        m.d.comb += enable[2].eq(Mux(valid[2], mask2 & Mux(pot2 & ~plastic2, 0, (1 << P) - 1), 0))
        trace2 = [Mux(pot2, pre2, post2[lane]) for lane in range(P)]

        # stage 2 -> 3: step the LFSRs of the updated lanes; |a R| * trace; the sign of dw
        # (depression: w - dw; potentiation: w + dw; dw has the sign of a R)
        magnitude2 = Mux(pot2, mag_plus, mag_minus)
        subtract = {3: pipe("subtract3", Mux(pot2, neg_plus, ~neg_minus))}
        product3, draw3 = [], []
        for lane in range(P):
            nxt = Signal(LFSR_BITS, name=f"lfsr{lane}_next")
            m.d.comb += nxt.eq((lfsr[lane] >> 1) ^ Mux(lfsr[lane][0], LFSR_TAPS, 0))
            with m.If(enable[2][lane]):
                m.d.sync += lfsr[lane].eq(nxt)
            product3.append(pipe(f"product{lane}_3", magnitude2 * trace2[lane], unsigned(3 * T - 1)))
            draw3.append(pipe(f"draw{lane}_3", nxt & round_mask, unsigned(STDP_SHIFT_MAX)))
        for k in range(3, 6):
            weights[k] = pipe(f"weights{k}", weights[k - 1])
            enable[k] = pipe(f"enable{k}", enable[k - 1])
            if k > 3:
                subtract[k] = pipe(f"subtract{k}", subtract[k - 1])
        # a SEED write reseeds every lane's LFSR in the next cycle (from the seed register)
        with m.If(self.reseed):
            for lane in range(P):
                seeded = (self.seed + 0x9E37 * (lane + 1))[:LFSR_BITS]
                m.d.sync += lfsr[lane].eq(Mux(seeded == 0, 1, seeded))

        # stage 3 -> 4: |m| + (draw & mask) (< 2^23: |m| <= 255 * 255 * 128)
        sum4 = [pipe(f"sum{lane}_4", product3[lane] + draw3[lane], unsigned(3 * T - 1)) for lane in range(P)]
        # stage 4 -> 5: >> shift; a change above 255 clips to a bound whatever the weight
        change5 = []
        for lane in range(P):
            shifted = sum4[lane] >> self.shift
            change5.append(pipe(f"change{lane}_5", Mux(shifted > 255, 255, shifted[:8]), unsigned(8)))
        # stage 5: clip(w -/+ change, w_min, w_max), written back (only the updated lanes)
        new_weights = []
        for lane in range(P):
            w = weights[5][lane]
            total = Signal(signed(WEIGHT_BITS + 2), name=f"rmw_total{lane}")
            m.d.comb += total.eq(Mux(subtract[5], w - change5[lane], w + change5[lane]))
            bounded = Mux(total < self.w_min, self.w_min, Mux(total > self.w_max, self.w_max, total[:WEIGHT_BITS]))
            new_weights.append(bounded[:WEIGHT_BITS])
        update = self.weight_update
        m.d.comb += [update.read.eq(self.issue), update.read_addr.eq(self.addr),
                     update.write.eq(valid[5]), update.write_addr.eq(address[5]),
                     update.write_data.eq(Cat(*new_weights)), update.write_lanes.eq(enable[5])]
        return m


class StdpEngine(wiring.Component):
    """Trace-based STDP of one core: the learning phase after an update sweep.

    Ports: ``step`` and ``learn``/``reward`` (the core's), ``bus``/``read_data``
    (``MemorySpace.TRACE``, ``PLASTIC``, ``STDP`` and ``CoreRegister.LEARNING``), ``accepted``
    (events flag their axon in the bank of their step), ``sweep_bank`` and ``sweep_done`` (the
    sweep's), ``record`` (the sweep's spikes, kept per neuron), ``weight_update`` (to the
    integrator), ``busy`` (the learning phase, or the flag clear of a step without learning,
    runs) and ``hold`` (keep ``axon_in`` off: this step learns, or is learning).

    At a `step` with learning enabled (`learn` and ``CoreRegister.LEARNING``) the sequencer
    waits for the sweep, decays the post-traces, scans the axons (decaying the pre-traces,
    adding the increments of the axons with an event, depressing the rows of plastic axons with
    an event), potentiates the columns of the neurons that fired, and adds the post-trace
    increments. Without learning it only clears the swept bank's pre-event flags (one axon per
    cycle, while the next step's events are accepted).
    """

    def __init__(self, neurons, axons, lanes):
        self.neurons, self.axons, self.lanes = neurons, axons, lanes
        self.words = neurons // lanes
        self.shape = core_shape(neurons, axons, lanes)      #: for the memory map
        super().__init__({
            "step": In(1), "learn": In(1), "reward": In(signed(8)),
            "bus": In(CoreBus()), "read_data": Out(32),
            "accepted": In(AcceptedEvent(axons)),
            "sweep_bank": In(1), "sweep_done": In(1),
            "record": In(SpikeRecord(neurons)),
            "weight_update": Out(WeightUpdatePort(axons * self.words, lanes)),
            "busy": Out(1), "hold": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        A, P, W = self.axons, self.lanes, self.words
        lane_bits = exact_log2(P)
        memories = self._memories(m)
        event_rd, event_wr, fired_wr = memories.event_rd, memories.event_wr, memories.fired_wr

        m.submodules.registers = registers = StdpRegisters(self.shape)
        wiring.connect(m, wiring.flipped(self.bus), registers.bus)
        m.d.comb += registers.reward.eq(self.reward)
        m.submodules.update = update = WeightUpdatePipeline(A * W, P)
        wiring.connect(m, update.weight_update, wiring.flipped(self.weight_update))
        for name in ("a_plus", "a_minus", "shift", "w_min", "w_max", "reward", "seed", "reseed"):
            source = self.reward if name == "reward" else getattr(registers, name)
            m.d.comb += getattr(update, name).eq(source)
        m.d.comb += [update.pre.eq(memories.pre_rd.data), update.post.eq(memories.post_rd.data),
                     update.plastic.eq(memories.plastic_rd.data)]

        # an accepted event flags its axon in its bank
        accepted = self.accepted
        for b in range(2):
            m.d.comb += [event_wr[b].addr.eq(accepted.axon), event_wr[b].data.eq(1),
                         event_wr[b].en.eq(accepted.valid & (accepted.bank == b))]
        # the sweep records every neuron's spike (its last stage)
        record = self.record
        lane = record.neuron[:lane_bits] if lane_bits else Const(0, 1)
        m.d.comb += [fired_wr.addr.eq(record.neuron >> lane_bits),
                     fired_wr.data.eq(Mux(record.fired, (1 << P) - 1, 0)),
                     fired_wr.en.eq(Mux(record.valid, 1 << lane, 0))]

        traces = self._trace_passes(m, memories, registers)
        phase = self._sequencer(m, memories, traces, update, registers.learning)
        m.d.comb += [self.busy.eq(phase.busy | traces.post_running),
                     self.hold.eq(phase.learning | (self.step & phase.enabled))]

        # read ports: the scans (holding while a row or column issues), the trace passes, or a
        # request while idle
        m.d.comb += [
            memories.pre_rd.addr.eq(phase.axon_counter), memories.pre_rd.en.eq(~phase.in_row),
            memories.plastic_rd.addr.eq(phase.axon_counter), memories.plastic_rd.en.eq(~phase.in_row),
            event_rd[0].addr.eq(phase.axon_counter), event_rd[0].en.eq(~phase.in_row),
            event_rd[1].addr.eq(phase.axon_counter), event_rd[1].en.eq(~phase.in_row),
            memories.post_rd.addr.eq(traces.post_index),
            memories.fired_rd.addr.eq(traces.post_index), memories.fired_rd.en.eq(~phase.in_column),
        ]
        m.d.sync += Assert(~(phase.learning & accepted.valid), "learning: an event accepted during the learning phase")
        self._trace_requests(m, memories)
        m.d.comb += self.read_data.eq(registers.read_data | memories.read_data)
        return m

    def _memories(self, m):
        """The trace and flag memories (their ports, in a namespace)."""
        A, P, W = self.axons, self.lanes, self.words
        ports = SimpleNamespace(read_data=Signal(32, name="trace_read_data"))
        m.submodules.pre_trace_mem = pre_mem = Memory(shape=unsigned(T), depth=A, init=[])
        ports.pre_rd, ports.pre_wr = pre_mem.read_port(transparent_for=()), pre_mem.write_port()
        m.submodules.plastic_mem = plastic_mem = Memory(shape=unsigned(1), depth=A, init=[])
        ports.plastic_rd, ports.plastic_wr = plastic_mem.read_port(transparent_for=()), plastic_mem.write_port()
        ports.post_layout = data.ArrayLayout(unsigned(T), P)
        m.submodules.post_trace_mem = post_mem = Memory(shape=ports.post_layout, depth=W, init=[])
        ports.post_rd = post_mem.read_port(transparent_for=())
        ports.post_wr = post_mem.write_port(granularity=1)      # one trace per enable bit
        m.submodules.fired_mem = fired_mem = Memory(shape=unsigned(P), depth=W, init=[])
        ports.fired_rd = fired_mem.read_port(transparent_for=())
        ports.fired_wr = fired_mem.write_port(granularity=1)
        ports.event_rd, ports.event_wr = [], []
        for b in range(2):      # pre-event flags, one memory per accumulator bank
            event_mem = Memory(shape=unsigned(1), depth=A, init=[])
            m.submodules[f"pre_event_bank{b}"] = event_mem
            ports.event_rd.append(event_mem.read_port(transparent_for=()))
            ports.event_wr.append(event_mem.write_port())
        return ports

    def _trace_passes(self, m, memories, registers):
        """The post-trace passes (decay before depression, increments after potentiation) and
        the pre-trace updates of the axon scan; their control signals, in a namespace."""
        P = self.lanes
        factor = {field: getattr(registers, f"{_config_name(field)}_factor") for field in DECAY_FIELDS}

        def decayed(trace, field):
            """``trace * (4096 - d) >> 12`` of an unsigned trace (rounding toward zero)."""
            return ((trace * factor[field]) >> DECAY_BITS)[:T]

        def incremented(trace, increment):
            total = trace + increment
            return Mux(total > TRACE_MAX, TRACE_MAX, total[:T])

        pipe = lambda name, value, shape=None: pipeline_register(m, name, value, shape)  # noqa: E731
        # post passes: issue: read a word of post-traces and fired flags; 1: data out;
        # 2: registered; 3: new traces; 4: written
        traces = SimpleNamespace(post_issue=Signal(), post_is_increment=Signal(), pre_scan=Signal(),
                                 pre_trace1=Signal(T), pre_event1=Signal(), pre_axon1=Signal(range(self.axons)))
        # the word counter of the post-trace passes, of a depressed row and of the fired scan
        # (one register addresses post_trace_mem and fired_mem: no address multiplexer)
        traces.post_index = Signal(range(self.words + 1))
        post_valid1 = pipe("post_valid1", traces.post_issue)
        post_valid2 = pipe("post_valid2", post_valid1)
        post_valid3 = pipe("post_valid3", post_valid2)
        post_valid4 = pipe("post_valid4", post_valid3)
        post_word4 = pipe("post_word4", pipe("post_word3", pipe("post_word2", pipe("post_word1", traces.post_index))))
        post_increment3 = pipe("post_increment3", pipe("post_increment2",
                                                       pipe("post_increment1", traces.post_is_increment)))
        post_old2 = pipe("post_old2", memories.post_rd.data)
        post_old3 = pipe("post_old3", post_old2)
        fired3 = pipe("post_fired3", pipe("post_fired2", memories.fired_rd.data))
        post_decayed3 = [pipe(f"post_decayed{lane}_3", decayed(post_old2[lane], StdpField.POST_DECAY))
                         for lane in range(P)]
        post_new4 = pipe("post_new4", Cat(*[
            Mux(post_increment3,
                Mux(fired3[lane], incremented(post_old3[lane], registers.post_increment), post_old3[lane]),
                post_decayed3[lane])
            for lane in range(P)]))
        traces.post_running = post_valid1 | post_valid2 | post_valid3 | post_valid4
        post_wr = memories.post_wr
        with m.If(post_valid4):
            m.d.comb += [post_wr.addr.eq(post_word4), post_wr.data.eq(post_new4), post_wr.en.eq((1 << P) - 1)]

        # pre-trace updates of the axon scan: 1: registered; 2: decayed; written (+ increment)
        pre_valid1 = pipe("pre_valid1", traces.pre_scan)
        pre_valid2 = pipe("pre_valid2", pre_valid1)
        pre_decayed2 = pipe("pre_decayed2", decayed(traces.pre_trace1, StdpField.PRE_DECAY), unsigned(T))
        pre_event2 = pipe("pre_event2", traces.pre_event1)
        pre_axon2 = pipe("pre_axon2", traces.pre_axon1)
        pre_wr = memories.pre_wr
        with m.If(pre_valid2):
            m.d.comb += [pre_wr.addr.eq(pre_axon2), pre_wr.en.eq(1),
                         pre_wr.data.eq(Mux(pre_event2, incremented(pre_decayed2, registers.pre_increment),
                                            pre_decayed2))]
        traces.pre_running = pre_valid1 | pre_valid2
        return traces

    def _scan_pipeline(self, m, prefix, count, sources, advance, start, issue):
        """A scan over `count` entries read through a 2-stage pipeline (1: memory data out,
        2: registered); it holds while `advance` is low, so it resumes without a bubble. The
        entry index and registered `sources` of the entry at stage 2 (valid2)."""
        valid1, valid2 = Signal(name=f"{prefix}_valid1"), Signal(name=f"{prefix}_valid2")
        index1 = Signal(range(count), name=f"{prefix}_index1")
        index2 = Signal(range(count), name=f"{prefix}_index2")
        data2 = {name: Signal(value.shape(), name=f"{prefix}_{name}2") for name, value in sources.items()}
        with m.If(start):
            m.d.sync += [issue.eq(0), valid1.eq(0), valid2.eq(0)]
        with m.Elif(advance):
            m.d.sync += [issue.eq(issue + (issue != count)), valid1.eq(issue != count), index1.eq(issue),
                         valid2.eq(valid1), index2.eq(index1)]
            m.d.sync += [data2[name].eq(value) for name, value in sources.items()]
        return valid2, index2, data2

    def _sequencer(self, m, memories, traces, update, core_learning):
        """The learning-phase state machine; its state, in a namespace."""
        A, P, W = self.axons, self.lanes, self.words
        event_rd, event_wr = memories.event_rd, memories.event_wr
        sweep_bank = self.sweep_bank
        post_index = traces.post_index
        # the axon counter of the axon scan and of a potentiated column (one register addresses
        # the per-axon memories: no address multiplexer)
        phase = SimpleNamespace(axon_counter=Signal(range(A + 1)), in_row=Signal(), in_column=Signal(),
                                enabled=self.learn & core_learning)
        axon_counter = phase.axon_counter
        in_scan, in_column_scan = Signal(), Signal()
        scan_start, column_start = Signal(), Signal()
        scan_valid, scan_index, scan = self._scan_pipeline(
            m, "scan", A, {"pre": memories.pre_rd.data, "plastic": memories.plastic_rd.data,
                           "event": Mux(sweep_bank, event_rd[1].data, event_rd[0].data)},
            in_scan, scan_start, axon_counter)
        fired_valid, fired_index, fired_scan = self._scan_pipeline(
            m, "fired", W, {"fired": memories.fired_rd.data}, in_column_scan, column_start, post_index)
        row_axon, row_addr = Signal(range(A)), Signal(range(A * W))
        column_word, column_mask, column_addr = Signal(range(W)), Signal(P), Signal(range(A * W))
        clear_axon = Signal(range(A))

        def clear_event_flag(axon):
            for b in range(2):
                with m.If(sweep_bank == b):
                    m.d.comb += [event_wr[b].addr.eq(axon), event_wr[b].data.eq(0), event_wr[b].en.eq(1)]

        def issue_update(addr, potentiate, mask):
            m.d.comb += [update.issue.eq(1), update.addr.eq(addr), update.potentiate.eq(potentiate),
                         update.mask.eq(mask)]

        def post_pass(increment, last_state):
            m.d.comb += [traces.post_issue.eq(1), traces.post_is_increment.eq(increment)]
            m.d.sync += post_index.eq(post_index + 1)
            with m.If(post_index == W - 1):
                m.next = last_state

        with m.FSM(name="learning") as fsm:
            with m.State("IDLE"):
                with m.If(self.step):
                    m.d.sync += clear_axon.eq(0)
                    with m.If(phase.enabled):
                        m.next = "WAIT_SWEEP"
                    with m.Else():
                        m.next = "CLEAR"
            with m.State("CLEAR"):         # learning off: clear the swept bank's pre-event flags
                clear_event_flag(clear_axon)
                m.d.sync += clear_axon.eq(clear_axon + 1)
                with m.If(clear_axon == A - 1):
                    m.next = "IDLE"
            with m.State("WAIT_SWEEP"):
                with m.If(self.sweep_done):
                    m.d.sync += post_index.eq(0)
                    m.next = "POST_DECAY"
            with m.State("POST_DECAY"):
                post_pass(0, "POST_DECAY_DRAIN")
            with m.State("POST_DECAY_DRAIN"):
                m.d.comb += scan_start.eq(1)
                with m.If(~traces.post_running):
                    m.next = "SCAN"
            with m.State("SCAN"):
                # the axon at stage 2: x = decay(x) (+ increment if it had an event); clear its
                # flag; a plastic axon with an event has its row depressed
                m.d.comb += in_scan.eq(1)
                with m.If(scan_valid):
                    m.d.comb += traces.pre_scan.eq(1)
                    m.d.sync += [traces.pre_trace1.eq(scan["pre"]), traces.pre_event1.eq(scan["event"]),
                                 traces.pre_axon1.eq(scan_index)]
                    clear_event_flag(scan_index)
                    with m.If(scan["event"] & scan["plastic"]):
                        m.d.sync += [row_axon.eq(scan_index), row_addr.eq(scan_index * W), post_index.eq(0)]
                        m.next = "ROW"
                    with m.Elif(scan_index == A - 1):
                        m.next = "DEPRESSION_DRAIN"
            with m.State("ROW"):
                m.d.comb += phase.in_row.eq(1)
                issue_update(row_addr, 0, (1 << P) - 1)
                m.d.sync += [row_addr.eq(row_addr + 1), post_index.eq(post_index + 1)]
                with m.If(post_index == W - 1):
                    with m.If(row_axon == A - 1):
                        m.next = "DEPRESSION_DRAIN"
                    with m.Else():
                        m.next = "SCAN"
            with m.State("DEPRESSION_DRAIN"):
                m.d.comb += column_start.eq(1)
                with m.If(~update.running & ~traces.pre_running):
                    m.next = "COLUMN_SCAN"
            with m.State("COLUMN_SCAN"):
                m.d.comb += in_column_scan.eq(1)
                with m.If(fired_valid):
                    with m.If(fired_scan["fired"] != 0):
                        m.d.sync += [column_mask.eq(fired_scan["fired"]), column_word.eq(fired_index),
                                     axon_counter.eq(0), column_addr.eq(fired_index)]
                        m.next = "COLUMN"
                    with m.Elif(fired_index == W - 1):
                        m.next = "POTENTIATION_DRAIN"
            with m.State("COLUMN"):
                m.d.comb += phase.in_column.eq(1)
                issue_update(column_addr, 1, column_mask)
                m.d.sync += [axon_counter.eq(axon_counter + 1), column_addr.eq(column_addr + W)]
                with m.If(axon_counter == A - 1):
                    with m.If(column_word == W - 1):
                        m.next = "POTENTIATION_DRAIN"
                    with m.Else():
                        m.next = "COLUMN_SCAN"
            with m.State("POTENTIATION_DRAIN"):
                with m.If(~update.running):
                    m.d.sync += post_index.eq(0)
                    m.next = "POST_INCREMENT"
            with m.State("POST_INCREMENT"):
                post_pass(1, "IDLE")

        phase.busy = ~fsm.ongoing("IDLE")
        phase.learning = ~fsm.ongoing("IDLE") & ~fsm.ongoing("CLEAR")
        return phase

    def _trace_requests(self, m, memories):
        """``MemorySpace.TRACE`` (pre-traces at axon addresses, then post-traces) and
        ``PLASTIC`` requests: the memories addressed in the access cycle, their data registered
        in the collect cycle, the response word picked from the registers."""
        P = self.lanes
        lane_bits = exact_log2(P)
        bus, request = self.bus, self.bus.request
        decoder = CoreDecoder(request, self.shape)
        addr = request.addr
        post_start = decoder.address(MemorySpace.TRACE, TraceField.POST)
        post = Signal(range(decoder.size(MemorySpace.TRACE)))
        m.d.comb += post.eq(addr - post_start)
        post_word = post >> lane_bits
        post_lane = post[:lane_bits] if lane_bits else Const(0, 1)
        is_pre = addr < post_start
        trace_hit = decoder.hit(MemorySpace.TRACE)
        plastic_hit = decoder.hit(MemorySpace.PLASTIC)
        write = bus.access & request.write
        with m.If(bus.access):
            m.d.comb += [memories.pre_rd.addr.eq(addr), memories.plastic_rd.addr.eq(addr),
                         memories.post_rd.addr.eq(post_word)]
            with m.If(write & trace_hit):
                with m.If(is_pre):
                    m.d.comb += [memories.pre_wr.addr.eq(addr), memories.pre_wr.data.eq(request.data[:T]),
                                 memories.pre_wr.en.eq(1)]
                with m.Else():
                    m.d.comb += [memories.post_wr.addr.eq(post_word),
                                 memories.post_wr.data.eq(Cat(*[request.data[:T]] * P)),
                                 memories.post_wr.en.eq(1 << post_lane)]
            m.d.comb += [memories.plastic_wr.addr.eq(addr), memories.plastic_wr.data.eq(request.data[0]),
                         memories.plastic_wr.en.eq(write & plastic_hit)]

        raw_pre, raw_plastic = Signal(T), Signal()
        raw_post = Signal(memories.post_layout)
        with m.If(bus.collect):
            m.d.sync += [raw_pre.eq(memories.pre_rd.data), raw_plastic.eq(memories.plastic_rd.data),
                         raw_post.eq(memories.post_rd.data)]
        with m.If(~request.write):
            with m.If(trace_hit):
                m.d.comb += memories.read_data.eq(Mux(is_pre, raw_pre,
                                                      raw_post.as_value().word_select(post_lane, T) if P > 1
                                                      else raw_post.as_value()))
            with m.If(plastic_hit):
                m.d.comb += memories.read_data.eq(raw_plastic)
