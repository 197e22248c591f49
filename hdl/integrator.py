"""The neuron core's integrator: event-driven synaptic integration into two accumulator banks.

:class:`Integrator` holds the core's weight memory (``axons x neurons`` int8 weights, `lanes`
per word) and two accumulator banks (one 24-bit (ACC_BITS) accumulator per neuron each). An accepted axon
event streams its weight row through a read -> add -> write-back pipeline into the bank of its
step; the update sweep (:mod:`~neurofabric.hdl.sweep`) reads and clears the other bank through
:class:`AccumulatorPort`, and the STDP engine (:mod:`~neurofabric.hdl.stdp`) updates weights
through :class:`WeightUpdatePort`.
"""

from amaranth import Assert, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from neurofabric.hdl.core_memory import CoreBus, CoreDecoder, core_shape
from neurofabric.hdl.protocol import ACC_BITS, WEIGHT_BITS, MemorySpace, signed_range

__all__ = ["AccumulatorPort", "AcceptedEvent", "Integrator", "WeightUpdatePort", "HAZARD_WINDOW",
           "saturate"]

#: Latency of the forwarding window of the integration pipeline: a read issued in cycle i does
#: not see the write-backs of the 3 operations issued in cycles i-3 .. i-1.
HAZARD_WINDOW = 3


def saturate(value, bits):
    """Clamp a signed value (wider than `bits`) to the `bits`-wide signed range. The value is in
    range when its bits from `bits - 1` up are all equal (a balanced reduction, not a compare
    along a carry chain); otherwise its sign picks the bound."""
    lo, hi = signed_range(bits)
    top = value[bits - 1:]
    in_range = top.all() | ~top.any()
    return Mux(in_range, value[:bits].as_signed(), Mux(value[-1], lo, hi))


def accumulator_layout(lanes):
    """One word of an accumulator bank: `lanes` ACC_BITS-bit accumulators."""
    return data.ArrayLayout(signed(ACC_BITS), lanes)


class AccumulatorPort(wiring.Signature):
    """The update sweep's access to the bank it updates from (members from the sweep's side).

    - ``read``, ``word``: read word `word` of the swept bank this cycle; ``data`` holds it in
      the next cycle.
    - ``clear``, ``clear_word``: write 0 to word `clear_word` of the swept bank this cycle.
    - ``bank``: the swept bank (the one events of the previous step went to).
    - ``in_flight``: an operation on the swept bank is still in the integration pipeline.
    """

    def __init__(self, words, lanes):
        self.words, self.lanes = words, lanes
        super().__init__({
            "read": Out(1), "word": Out(range(words)),
            "clear": Out(1), "clear_word": Out(range(words)),
            "data": In(accumulator_layout(lanes)),
            "bank": In(1),
            "in_flight": In(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and (other.words, other.lanes) == (self.words, self.lanes)

    def __hash__(self):
        return hash((type(self), self.words, self.lanes))


class WeightUpdatePort(wiring.Signature):
    """The STDP engine's read-modify-write access to the weight memory (members from its side).

    - ``read``, ``read_addr``: read weight word `read_addr` this cycle; ``weights`` holds it two
      cycles later (the integrator's stage-2 register of the weight word).
    - ``write``, ``write_addr``, ``write_data``, ``write_lanes``: write the lanes set in
      `write_lanes` of word `write_addr`.
    """

    def __init__(self, depth, lanes):
        self.depth, self.lanes = depth, lanes
        super().__init__({
            "read": Out(1), "read_addr": Out(range(depth)),
            "write": Out(1), "write_addr": Out(range(depth)),
            "write_data": Out(WEIGHT_BITS * lanes), "write_lanes": Out(lanes),
            "weights": In(data.ArrayLayout(signed(WEIGHT_BITS), lanes)),
        })

    def __eq__(self, other):
        return type(other) is type(self) and (other.depth, other.lanes) == (self.depth, self.lanes)

    def __hash__(self):
        return hash((type(self), self.depth, self.lanes))


class AcceptedEvent(wiring.Signature):
    """An axon event as it is accepted (members from the accepting side): ``valid`` for one
    cycle, its ``axon`` and the accumulator ``bank`` of its step."""

    def __init__(self, axons):
        self.axons = axons
        super().__init__({"valid": Out(1), "axon": Out(range(axons)), "bank": Out(1)})

    def __eq__(self, other):
        return type(other) is type(self) and other.axons == self.axons

    def __hash__(self):
        return hash((type(self), self.axons))


class Integrator(wiring.Component):
    """Integrates axon events into the accumulator bank of the next update.

    Ports: ``axon_in`` (the core's), ``step`` (the core's: switches banks), ``hold`` (keep
    ``axon_in`` not ready), ``bus``/``read_data`` (``MemorySpace.WEIGHT`` requests),
    ``accumulators`` (the sweep's :class:`AccumulatorPort`), ``busy`` (an event is issuing or in
    stages 1..3), and with `learning` ``weight_update`` (:class:`WeightUpdatePort`) and
    ``accepted`` (:class:`AcceptedEvent`, for the STDP engine's pre-event flags).

    Cycle behaviour: the issue stage reads one weight word per cycle (stage 0); the word and the
    accumulator word are out of the memories at stage 1 and registered at stage 2, where the
    sums are formed (saturating at ACC_BITS bits); stage 3 writes them back. A read of the accumulator
    word written by one of the 3 younger operations (rows of at most ``HAZARD_WINDOW`` words)
    takes the value from the write-back history instead (stages 3..5). An event is accepted in
    the cycle the previous event's last word issues, so rows stream back to back at `lanes`
    synapses per cycle; a request's access cycle holds ``axon_in`` off for one cycle.
    """

    def __init__(self, neurons, axons, lanes, *, learning):
        self.neurons, self.axons, self.lanes, self.learning = neurons, axons, lanes, learning
        self.words = neurons // lanes
        members = {
            "axon_in": In(stream.Signature(range(axons))),
            "step": In(1),
            "hold": In(1),
            "bus": In(CoreBus()),
            "read_data": Out(32),
            "accumulators": In(AccumulatorPort(self.words, lanes)),
            "busy": Out(1),
        }
        if learning:
            members["weight_update"] = In(WeightUpdatePort(axons * self.words, lanes))
            members["accepted"] = Out(AcceptedEvent(axons))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        A, P, W = self.axons, self.lanes, self.words
        lane_bits = exact_log2(P)
        bus, request, sweep = self.bus, self.bus.request, self.accumulators
        weight_hit = CoreDecoder(request, core_shape(self.neurons, A, P)).hit(MemorySpace.WEIGHT)

        m.submodules.weight_mem = weight_mem = Memory(
            shape=WEIGHT_BITS * P, depth=A * W, init=[])
        weight_rd = weight_mem.read_port(transparent_for=())
        weight_wr = weight_mem.write_port(granularity=WEIGHT_BITS)
        acc_layout = accumulator_layout(P)
        acc_rd, acc_wr = [], []
        for bank in range(2):
            acc_mem = Memory(shape=acc_layout, depth=W, init=[])
            m.submodules[f"acc_bank{bank}"] = acc_mem
            acc_rd.append(acc_mem.read_port(transparent_for=()))
            acc_wr.append(acc_mem.write_port())

        int_bank = Signal()         # the accumulator bank that events accepted now go to
        sweep_bank = Signal()       # the bank the sweep reads and clears
        iss_active = Signal()       # issue stage: a word of an event's row is read this cycle
        iss_row = Signal(range(A * W))
        iss_word = Signal(range(W))
        iss_bank = Signal()
        iss_last = Signal()
        m.d.comb += iss_last.eq(iss_word == W - 1)
        # pipeline stages 1..5 (1: memory data out, 2: add, 3: write back, 4-5: write history)
        valid = [None] + [Signal(name=f"int_valid{k}") for k in range(1, 6)]
        word = [None] + [Signal(range(W), name=f"int_word{k}") for k in range(1, 6)]
        bank = [None] + [Signal(name=f"int_bank{k}") for k in range(1, 6)]
        result = {k: Signal(acc_layout, name=f"int_result{k}") for k in range(3, 6)}
        m.d.comb += self.busy.eq(iss_active | valid[1] | valid[2] | valid[3])

        # --- issue: accept an event (the next step's if `step` pulses now), read its row -------
        with m.If(self.step):
            m.d.sync += [int_bank.eq(~int_bank), sweep_bank.eq(int_bank)]
        m.d.comb += self.axon_in.ready.eq(~bus.access & (~iss_active | iss_last) & ~self.hold)
        accept = self.axon_in.valid & self.axon_in.ready
        event_bank = Mux(self.step, ~int_bank, int_bank)
        with m.If(accept):
            m.d.sync += [
                iss_active.eq(self.axon_in.payload < A),
                iss_row.eq(self.axon_in.payload * W),
                iss_word.eq(0),
                iss_bank.eq(event_bank),
            ]
            m.d.sync += Assert(self.axon_in.payload < A, "axon_in: axon index out of range")
        with m.Elif(iss_active):
            with m.If(iss_last):
                m.d.sync += iss_active.eq(0)
            with m.Else():
                m.d.sync += [iss_row.eq(iss_row + 1), iss_word.eq(iss_word + 1)]
        if self.learning:
            m.d.comb += [self.accepted.valid.eq(accept & (self.axon_in.payload < A)),
                         self.accepted.axon.eq(self.axon_in.payload), self.accepted.bank.eq(event_bank)]

        m.d.sync += [valid[1].eq(iss_active), word[1].eq(iss_word), bank[1].eq(iss_bank)]
        for k in range(2, 6):
            m.d.sync += [valid[k].eq(valid[k - 1]), word[k].eq(word[k - 1]), bank[k].eq(bank[k - 1])]

        # --- stage 1 -> 2: register the memory outputs and the forwarding matches -----------------
        weights2 = Signal(data.ArrayLayout(signed(WEIGHT_BITS), P))
        acc2 = Signal(acc_layout)
        m.d.sync += [
            weights2.eq(weight_rd.data),
            acc2.eq(Mux(bank[1], acc_rd[1].data.as_value(), acc_rd[0].data.as_value())),
        ]
        forward = {k: Signal(name=f"int_forward{k}") for k in range(3, 6)}
        for k in range(3, 6):
            match = valid[k - 1] & (word[k - 1] == word[1]) & (bank[k - 1] == bank[1])
            if W <= HAZARD_WINDOW:
                m.d.sync += forward[k].eq(valid[1] & match)
            else:
                # a row has >= 4 distinct words: no read can overlap a pending write
                m.d.sync += Assert(~(valid[1] & match), "integration: read-after-write hazard")

        # --- stage 2: acc + weight, saturating, per lane (forwarding the 3 younger write-backs) ---
        for lane in range(P):
            base = acc2[lane]
            if W <= HAZARD_WINDOW:
                for k in (5, 4, 3):     # the most recent write wins
                    base = Mux(forward[k], result[k][lane], base)
            total = Signal(signed(ACC_BITS + 1), name=f"int_sum{lane}")
            m.d.comb += total.eq(base + weights2[lane])
            m.d.sync += result[3][lane].eq(saturate(total, ACC_BITS))
        m.d.sync += [result[4].eq(result[3]), result[5].eq(result[4])]

        # --- stage 3: write back; the sweep clears its bank one word at a time --------------------
        for b in range(2):
            with m.If(valid[3] & (bank[3] == b)):
                m.d.comb += [acc_wr[b].addr.eq(word[3]), acc_wr[b].data.eq(result[3]),
                             acc_wr[b].en.eq(1)]
                m.d.sync += Assert(~(sweep.clear & (sweep_bank == b)),
                                   "accumulator bank written by integration and sweep at once")
            with m.Elif(sweep.clear & (sweep_bank == b)):
                m.d.comb += [acc_wr[b].addr.eq(sweep.clear_word), acc_wr[b].data.eq(0),
                             acc_wr[b].en.eq(1)]

        # --- the sweep's side of the banks -----------------------------------------------------------
        for b in range(2):
            with m.If(sweep.read & (sweep_bank == b)):
                m.d.comb += acc_rd[b].addr.eq(sweep.word)
                m.d.sync += Assert(~(iss_active & (iss_bank == b)),
                                   "accumulator bank read by integration and sweep at once")
            with m.Else():
                m.d.comb += acc_rd[b].addr.eq(iss_word)
        m.d.comb += [
            sweep.data.eq(Mux(sweep_bank, acc_rd[1].data.as_value(), acc_rd[0].data.as_value())),
            sweep.bank.eq(sweep_bank),
            # operations on the swept bank left in stages 0..3
            sweep.in_flight.eq((iss_active & (iss_bank == sweep_bank)) | (valid[1] & (bank[1] == sweep_bank))
                               | (valid[2] & (bank[2] == sweep_bank)) | (valid[3] & (bank[3] == sweep_bank))),
        ]

        # --- the weight memory: one shared address (the integrator's row, or a request's word) ----
        write = bus.access & request.write & weight_hit
        req_lane = request.addr[:lane_bits] if lane_bits else 0
        weight_addr = Signal(range(A * W))
        m.d.comb += [
            weight_addr.eq(Mux(bus.access, request.addr >> lane_bits, iss_row)),
            weight_rd.addr.eq(weight_addr),
            weight_wr.addr.eq(weight_addr),
            weight_wr.data.eq(Cat(request.data[:WEIGHT_BITS] for _ in range(P))),
        ]
        with m.If(write):
            m.d.comb += weight_wr.en.eq(1 << req_lane)
        m.d.comb += weight_rd.en.eq(~write)
        if self.learning:
            update = self.weight_update
            m.d.comb += update.weights.eq(weights2)
            with m.If(update.read):       # integration of the swept bank is over by then
                m.d.comb += weight_rd.addr.eq(update.read_addr)
            with m.If(update.write):
                m.d.comb += [weight_wr.addr.eq(update.write_addr), weight_wr.data.eq(update.write_data),
                             weight_wr.en.eq(update.write_lanes)]
            m.d.sync += Assert(~(update.read & (iss_active | bus.access)), "learning: weight memory in use")
        # a read's word is in `weights2` in the respond cycle
        with m.If(weight_hit & ~request.write):
            weight = (weights2.as_value().word_select(req_lane, WEIGHT_BITS) if P > 1
                      else weights2.as_value()).as_signed()
            m.d.comb += self.read_data.eq(weight)
        return m
