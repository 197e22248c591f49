"""The neuron core: event-driven synaptic integration and a pipelined CUBA-LIF update sweep.

One :class:`NeuronCore` holds `neurons` neurons time-multiplexed over block RAM, `axons` input
axons and a dense ``axons x neurons`` int8 crossbar packed `lanes` weights per memory word. It
computes exactly what :meth:`neurofabric.host.model.ChipModel.step` computes for one core
(docs/core.md describes the pipelines and their cycle behaviour; docs/semantics.md the
arithmetic).
"""

from amaranth import Assert, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from neurofabric.hdl.protocol import (
    ACC_BITS,
    DECAY_BITS,
    DECAY_ONE,
    PROFILE_BITS,
    PROFILE_COUNT,
    REFRACTORY_BITS,
    STATE_BITS,
    WEIGHT_BITS,
    CoreRegister,
    MemorySpace,
    MemRequest,
    ProfileField,
    StateField,
    signed_range,
)

__all__ = ["NeuronCore", "CoreConfigError"]

STATE_MIN, STATE_MAX = signed_range(STATE_BITS)
ACC_MIN, ACC_MAX = signed_range(ACC_BITS)
WEIGHT_EXP_BITS = 4

#: Latency of the forwarding window of the integration pipeline: a read issued in cycle i does
#: not see the write-backs of the 3 operations issued in cycles i-3 .. i-1.
HAZARD_WINDOW = 3
#: Depth of the spike FIFO in front of `spike_out` (>= sweep pipeline depth + 2).
SPIKE_FIFO_DEPTH = 16


class CoreConfigError(ValueError):
    """A build parameter of :class:`NeuronCore` is out of range."""


def _check_param(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise CoreConfigError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")
    if not lo <= value <= hi:
        raise CoreConfigError(f"{name} = {value} is out of range: allowed [{lo}, {hi}]")
    return value


def _saturate(value, bits):
    """Clamp a signed value (wider than `bits`) to the `bits`-wide signed range."""
    lo, hi = signed_range(bits)
    return Mux(value > hi, hi, Mux(value < lo, lo, value[:bits].as_signed()))


#: A profile's fields after reset: those of the model's default `NeuronProfile` (no decay,
#: threshold 1024, v_reset 0, reset to value, no refractory period, no adaptation).
DEFAULT_THRESHOLD = 1 << 10


class NeuronCore(wiring.Component):
    """A CUBA-LIF neuron core (design.md section 5), bit-exact with the model's ``_update``.

    Parameters
    ----------
    neurons : int
        Neurons of the core, 1 .. 65536; a multiple of `lanes`.
    axons : int
        Input axons, 1 .. 65536 (``axons * neurons <= 2**24``, the WEIGHT address space).
    lanes : int
        Weights integrated per cycle (P), a power of two 1 .. 64.

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
    mem, mem_resp : memory requests and their responses (:class:`MemRequest`)
        Accepted only while the core is idle and no event is offered; exactly one response
        (32 bits) per request, four cycles later at the earliest: the read data, 0 for
        writes and for unknown spaces or addresses (which change nothing).

    Cycle behaviour: an event's weight row streams through a read -> add -> write-back pipeline
    at `lanes` synapses per cycle (latency 4); the update sweep issues one neuron per cycle
    through a 10-stage pipeline: ``neurons + 13`` cycles from `step` to idle when `spike_out`
    keeps up (the sweep holds 15 credits for the 16-entry spike FIFO, so it never overruns it).
    """

    def __init__(self, neurons, axons, lanes):
        self._MustUse__silence = True       # a rejected configuration is not an unused design
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
        self._MustUse__silence = False
        self.neurons, self.axons, self.lanes = neurons, axons, lanes
        self.words = neurons // lanes          #: memory words per weight row / accumulator bank
        super().__init__({
            "axon_in": In(stream.Signature(range(axons))),
            "spike_out": Out(stream.Signature(range(neurons))),
            "step": In(1),
            "busy": Out(1),
            "mem": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(32)),
        })

    def elaborate(self, platform):
        m = Module()
        N, A, P, W = self.neurons, self.axons, self.lanes, self.words
        lane_bits = exact_log2(P)

        # --- memories ------------------------------------------------------------------------
        m.submodules.weight_mem = weight_mem = Memory(
            shape=unsigned(WEIGHT_BITS * P), depth=A * W, init=[])
        weight_rd = weight_mem.read_port(transparent_for=())
        weight_wr = weight_mem.write_port(granularity=WEIGHT_BITS)

        acc_layout = data.ArrayLayout(signed(ACC_BITS), P)
        acc_rd, acc_wr = [], []
        for bank in range(2):
            acc_mem = Memory(shape=acc_layout, depth=W, init=[])
            m.submodules[f"acc_bank{bank}"] = acc_mem
            acc_rd.append(acc_mem.read_port(transparent_for=()))
            acc_wr.append(acc_mem.write_port())

        neuron_layout = data.StructLayout({"bias": signed(STATE_BITS), "profile": PROFILE_BITS})
        m.submodules.neuron_mem = neuron_mem = Memory(shape=neuron_layout, depth=N, init=[])
        neuron_rd = neuron_mem.read_port(transparent_for=())
        neuron_wr = neuron_mem.write_port()

        state_shapes = {
            "u": signed(STATE_BITS), "v": signed(STATE_BITS),
            "refractory": unsigned(REFRACTORY_BITS), "theta": signed(STATE_BITS),
        }
        state_rd, state_wr = {}, {}
        for name, shape in state_shapes.items():
            state_mem = Memory(shape=shape, depth=N, init=[])
            m.submodules[f"state_{name}_mem"] = state_mem
            state_rd[name] = state_mem.read_port(transparent_for=())
            state_wr[name] = state_mem.write_port()

        # profiles: one memory per group of fields read at the same sweep stage, 8 entries each
        # (LUT RAM on ECP5, EBR on iCE40). Decays are stored as factors 4096 - d.
        m.submodules.profile_decay_mem = profile_decay_mem = Memory(
            shape=data.ArrayLayout(unsigned(DECAY_BITS + 1), 3), depth=PROFILE_COUNT,
            init=[[DECAY_ONE] * 3] * PROFILE_COUNT)          # factors of du, dv, dtheta
        m.submodules.profile_threshold_mem = profile_threshold_mem = Memory(
            shape=data.ArrayLayout(signed(STATE_BITS), 2), depth=PROFILE_COUNT,
            init=[[DEFAULT_THRESHOLD, 0]] * PROFILE_COUNT)   # threshold, theta_plus
        m.submodules.profile_v_reset_mem = profile_v_reset_mem = Memory(
            shape=signed(STATE_BITS), depth=PROFILE_COUNT, init=[])
        m.submodules.profile_reset_mem = profile_reset_mem = Memory(
            shape=data.ArrayLayout(unsigned(REFRACTORY_BITS), 2), depth=PROFILE_COUNT,
            init=[])                                           # reset_mode, refractory
        profile_decay_rd = profile_decay_mem.read_port(transparent_for=())
        profile_decay_wr = profile_decay_mem.write_port(granularity=1)      # one field per enable bit
        profile_threshold_rd = profile_threshold_mem.read_port(transparent_for=())
        profile_threshold_wr = profile_threshold_mem.write_port(granularity=1)
        profile_v_reset_rd = profile_v_reset_mem.read_port(transparent_for=())
        profile_v_reset_wr = profile_v_reset_mem.write_port()
        profile_reset_rd = profile_reset_mem.read_port(transparent_for=())
        profile_reset_wr = profile_reset_mem.write_port(granularity=1)
        weight_exp = Signal(WEIGHT_EXP_BITS)

        m.submodules.spike_fifo = spike_fifo = fifo.SyncFIFOBuffered(
            width=max(1, ceil_log2(N)), depth=SPIKE_FIFO_DEPTH)
        m.d.comb += [
            self.spike_out.valid.eq(spike_fifo.r_rdy),
            self.spike_out.payload.eq(spike_fifo.r_data),
            spike_fifo.r_en.eq(self.spike_out.ready),
        ]

        # --- memory requests: accept (cycle 0), access (cycle 1), respond (cycle 2) -----------
        request = Signal(MemRequest)
        mem_access = Signal()       # the memories are addressed by `request` this cycle
        mem_collect = Signal()      # their read data is valid this cycle
        mem_format = Signal()       # the response is built from the registered read data
        resp_valid = Signal()
        resp_data = Signal(32)
        m.d.comb += [self.mem_resp.valid.eq(resp_valid), self.mem_resp.payload.eq(resp_data)]
        with m.If(self.mem_resp.ready):
            m.d.sync += resp_valid.eq(0)

        req_addr = request.addr
        req_word = Signal(range(A * W))
        req_lane = Signal(range(P))
        req_neuron = Signal(range(N))
        req_field = Signal(2)
        m.d.comb += [
            req_word.eq(req_addr >> lane_bits),
            req_lane.eq(req_addr[:lane_bits] if lane_bits else 0),
            req_neuron.eq(Mux(request.mem == MemorySpace.STATE, req_addr >> 2, req_addr)),
            req_field.eq(req_addr[:2]),
        ]
        in_space = {
            MemorySpace.WEIGHT: req_addr < A * N,
            MemorySpace.NEURON: req_addr < N,
            MemorySpace.PROFILE: req_addr < PROFILE_COUNT * 8,
            MemorySpace.STATE: req_addr < 4 * N,
            MemorySpace.CORE: req_addr == CoreRegister.WEIGHT_EXP.value,
        }
        req_hit = {space: (request.mem == space) & cond for space, cond in in_space.items()}

        # --- integration state -----------------------------------------------------------------
        int_bank = Signal()         # the accumulator bank that events accepted now go to
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

        # --- sweep state ---------------------------------------------------------------------
        sweep_pending = Signal()    # step pulsed; waiting for the old bank's writes to land
        sweep_bank = Signal()       # the bank the sweep reads and clears
        sweep_issuing = Signal()
        sweep_neuron = Signal(range(N))
        # credits: spike FIFO entries not yet claimed by a neuron in the sweep pipeline
        credits = Signal(range(SPIKE_FIFO_DEPTH), init=SPIKE_FIFO_DEPTH - 1)
        sweep_issue = Signal()

        busy = Signal()
        m.d.comb += busy.eq(iss_active | valid[1] | valid[2] | valid[3] | sweep_pending
                            | sweep_issuing | (credits != SPIKE_FIFO_DEPTH - 1))
        m.d.comb += self.busy.eq(busy)

        # --- memory request handling ---------------------------------------------------------
        m.d.comb += self.mem.ready.eq(~busy & ~self.step & ~mem_access & ~mem_collect
                                      & ~mem_format & ~resp_valid & ~self.axon_in.valid)
        m.d.sync += mem_access.eq(self.mem.valid & self.mem.ready)
        with m.If(self.mem.valid & self.mem.ready):
            m.d.sync += request.eq(self.mem.payload)
        m.d.sync += [mem_collect.eq(mem_access), mem_format.eq(mem_collect)]

        write = mem_access & request.write
        req_profile = req_addr[3:3 + PROFILE_BITS]
        req_profile_field = req_addr[:3]
        profile_read = Signal(32)
        profile_write = write & req_hit[MemorySpace.PROFILE]
        decay_value = Mux(request.data > DECAY_ONE, DECAY_ONE, request.data[:DECAY_BITS + 1])
        m.d.comb += [
            profile_decay_wr.addr.eq(req_profile),
            profile_decay_wr.data.eq(Cat(*[(DECAY_ONE - decay_value)[:DECAY_BITS + 1]] * 3)),
            profile_threshold_wr.addr.eq(req_profile),
            profile_threshold_wr.data.eq(Cat(*[request.data[:STATE_BITS]] * 2)),
            profile_v_reset_wr.addr.eq(req_profile),
            profile_v_reset_wr.data.eq(request.data[:STATE_BITS]),
            profile_reset_wr.addr.eq(req_profile),
            profile_reset_wr.data.eq(Cat(request.data[:1], Const(0, REFRACTORY_BITS - 1),
                                         request.data[:REFRACTORY_BITS])),
        ]
        with m.If(profile_write):
            with m.Switch(req_profile_field):
                for field, port, enable in (
                        (ProfileField.DU, profile_decay_wr, 0b001),
                        (ProfileField.DV, profile_decay_wr, 0b010),
                        (ProfileField.DTHETA, profile_decay_wr, 0b100),
                        (ProfileField.THRESHOLD, profile_threshold_wr, 0b01),
                        (ProfileField.THETA_PLUS, profile_threshold_wr, 0b10),
                        (ProfileField.V_RESET, profile_v_reset_wr, 0b1),
                        (ProfileField.RESET_MODE, profile_reset_wr, 0b01),
                        (ProfileField.REFRACTORY, profile_reset_wr, 0b10)):
                    with m.Case(field.value):
                        m.d.comb += port.en.eq(enable)
        with m.If(mem_collect):
            # the profile memories were addressed by the request in the access cycle
            with m.Switch(req_profile_field):
                for field, value in (
                        (ProfileField.DU, DECAY_ONE - profile_decay_rd.data[0]),
                        (ProfileField.DV, DECAY_ONE - profile_decay_rd.data[1]),
                        (ProfileField.DTHETA, DECAY_ONE - profile_decay_rd.data[2]),
                        (ProfileField.THRESHOLD, profile_threshold_rd.data[0]),
                        (ProfileField.THETA_PLUS, profile_threshold_rd.data[1]),
                        (ProfileField.V_RESET, profile_v_reset_rd.data),
                        (ProfileField.RESET_MODE, profile_reset_rd.data[0][0]),
                        (ProfileField.REFRACTORY, profile_reset_rd.data[1])):
                    with m.Case(field.value):
                        m.d.sync += profile_read.eq(value)     # sign-extends signed fields
        with m.If(mem_access):
            with m.If(write & req_hit[MemorySpace.CORE]):
                m.d.sync += weight_exp.eq(request.data[:WEIGHT_EXP_BITS])

        # weight memory: one shared address (the integrator's row, or a request's word)
        weight_addr = Signal(range(A * W))
        m.d.comb += [
            weight_addr.eq(Mux(mem_access, req_word, iss_row)),
            weight_rd.addr.eq(weight_addr),
            weight_wr.addr.eq(weight_addr),
            weight_wr.data.eq(Cat(request.data[:WEIGHT_BITS] for _ in range(P))),
        ]
        weight_write = write & req_hit[MemorySpace.WEIGHT]
        with m.If(weight_write):
            m.d.comb += weight_wr.en.eq(1 << req_lane)
        m.d.comb += weight_rd.en.eq(~weight_write)

        neuron_addr = Signal(range(N))
        m.d.comb += [
            neuron_addr.eq(Mux(mem_access, req_neuron, sweep_neuron)),
            neuron_rd.addr.eq(neuron_addr),
            neuron_wr.addr.eq(neuron_addr),
            neuron_wr.data.bias.eq(request.data[:STATE_BITS]),
            neuron_wr.data.profile.eq(request.data[STATE_BITS:STATE_BITS + PROFILE_BITS]),
            neuron_wr.en.eq(write & req_hit[MemorySpace.NEURON]),
            neuron_rd.en.eq(~neuron_wr.en),
        ]
        for name in state_shapes:
            m.d.comb += state_rd[name].addr.eq(neuron_addr)
        state_write_request = {
            name: write & req_hit[MemorySpace.STATE] & (req_field == field.value)
            for name, field in (("u", StateField.U), ("v", StateField.V),
                                ("refractory", StateField.REFRACTORY),
                                ("theta", StateField.THETA))}

        # collect: the memory outputs go straight into registers (block RAM clock-to-out is
        # slow); format: the response word is picked from them one cycle later
        raw_weights = Signal(WEIGHT_BITS * P)
        raw_neuron = Signal(neuron_layout)
        raw_state = {name: Signal(shape, name=f"raw_{name}") for name, shape in state_shapes.items()}
        with m.If(mem_collect):
            m.d.sync += [raw_weights.eq(weight_rd.data), raw_neuron.eq(neuron_rd.data)]
            m.d.sync += [raw_state[name].eq(state_rd[name].data) for name in state_shapes]
        with m.If(mem_format):
            m.d.sync += resp_valid.eq(1)
            m.d.sync += resp_data.eq(0)
            with m.If(~request.write):
                with m.If(req_hit[MemorySpace.WEIGHT]):
                    weight = (raw_weights.word_select(req_lane, WEIGHT_BITS) if P > 1
                              else raw_weights).as_signed()
                    m.d.sync += resp_data.eq(weight)
                with m.If(req_hit[MemorySpace.NEURON]):
                    m.d.sync += resp_data.eq(Cat(raw_neuron.bias, raw_neuron.profile))
                with m.If(req_hit[MemorySpace.PROFILE]):
                    m.d.sync += resp_data.eq(profile_read)
                with m.If(req_hit[MemorySpace.STATE]):
                    with m.Switch(req_field):
                        for field, name in ((StateField.U, "u"), (StateField.V, "v"),
                                            (StateField.REFRACTORY, "refractory"),
                                            (StateField.THETA, "theta")):
                            with m.Case(field.value):
                                m.d.sync += resp_data.eq(raw_state[name])  # sign-extends u, v, theta
                with m.If(req_hit[MemorySpace.CORE]):
                    m.d.sync += resp_data.eq(weight_exp)

        # --- integration: issue -> memory out -> add -> write back ----------------------------
        with m.If(self.step):
            m.d.sync += [int_bank.eq(~int_bank), sweep_bank.eq(int_bank), sweep_pending.eq(1)]

        m.d.comb += self.axon_in.ready.eq(~mem_access & (~iss_active | iss_last))
        accept = self.axon_in.valid & self.axon_in.ready
        with m.If(accept):
            m.d.sync += [
                iss_active.eq(self.axon_in.payload < A),
                iss_row.eq(self.axon_in.payload * W),
                iss_word.eq(0),
                iss_bank.eq(Mux(self.step, ~int_bank, int_bank)),
            ]
            m.d.sync += Assert(self.axon_in.payload < A, "axon_in: axon index out of range")
        with m.Elif(iss_active):
            with m.If(iss_last):
                m.d.sync += iss_active.eq(0)
            with m.Else():
                m.d.sync += [iss_row.eq(iss_row + 1), iss_word.eq(iss_word + 1)]

        m.d.sync += [valid[1].eq(iss_active), word[1].eq(iss_word), bank[1].eq(iss_bank)]
        for k in range(2, 6):
            m.d.sync += [valid[k].eq(valid[k - 1]), word[k].eq(word[k - 1]), bank[k].eq(bank[k - 1])]

        # stage 1 -> 2: register the memory outputs and the forwarding matches
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

        # stage 2: acc + weight, saturating, per lane (forwarding the 3 younger write-backs)
        for lane in range(P):
            base = acc2[lane]
            if W <= HAZARD_WINDOW:
                for k in (5, 4, 3):     # the most recent write wins
                    base = Mux(forward[k], result[k][lane], base)
            total = Signal(signed(ACC_BITS + 1), name=f"int_sum{lane}")
            m.d.comb += total.eq(base + weights2[lane])
            m.d.sync += result[3][lane].eq(_saturate(total, ACC_BITS))
        m.d.sync += [result[4].eq(result[3]), result[5].eq(result[4])]

        # stage 3: write back; the sweep clears its bank one word at a time
        sweep_clear = Signal()
        sweep_clear_word = Signal(range(W))
        for b in range(2):
            with m.If(valid[3] & (bank[3] == b)):
                m.d.comb += [acc_wr[b].addr.eq(word[3]), acc_wr[b].data.eq(result[3]),
                             acc_wr[b].en.eq(1)]
                m.d.sync += Assert(~(sweep_clear & (sweep_bank == b)),
                                   "accumulator bank written by integration and sweep at once")
            with m.Elif(sweep_clear & (sweep_bank == b)):
                m.d.comb += [acc_wr[b].addr.eq(sweep_clear_word), acc_wr[b].data.eq(0),
                             acc_wr[b].en.eq(1)]

        # --- the update sweep ----------------------------------------------------------------
        # The sweep of bank B starts once no operation on B is left in stages 0..3.
        old_bank_in_flight = (
            (iss_active & (iss_bank == sweep_bank)) | (valid[1] & (bank[1] == sweep_bank))
            | (valid[2] & (bank[2] == sweep_bank)) | (valid[3] & (bank[3] == sweep_bank)))
        with m.If(sweep_pending & ~old_bank_in_flight & ~mem_access):
            m.d.sync += [sweep_pending.eq(0), sweep_issuing.eq(1), sweep_neuron.eq(0)]
        sweep_in_pipeline = Signal()
        m.d.sync += Assert(~(self.step & (sweep_pending | sweep_issuing | sweep_in_pipeline)),
                           "step pulsed while a sweep is pending or running")

        m.d.comb += sweep_issue.eq(sweep_issuing & (credits != 0))
        with m.If(sweep_issue):
            with m.If(sweep_neuron == N - 1):
                m.d.sync += sweep_issuing.eq(0)
            with m.Else():
                m.d.sync += sweep_neuron.eq(sweep_neuron + 1)
        credit_return = Signal(2)

        sweep_word = Signal(range(W))
        sweep_lane = Signal(range(P))
        m.d.comb += [sweep_word.eq(sweep_neuron >> lane_bits),
                     sweep_lane.eq(sweep_neuron[:lane_bits] if lane_bits else 0)]
        for b in range(2):
            with m.If(sweep_issuing & (sweep_bank == b)):
                m.d.comb += acc_rd[b].addr.eq(sweep_word)
                m.d.sync += Assert(~(iss_active & (iss_bank == b)),
                                   "accumulator bank read by integration and sweep at once")
            with m.Else():
                m.d.comb += acc_rd[b].addr.eq(iss_word)

        def stage(name, value, shape=None):
            """A pipeline register holding `value` one cycle later."""
            # only the valid bits need a reset; data registers are reset-less (cheaper)
            reg = Signal(shape if shape is not None else value.shape(), name=f"sweep_{name}",
                         reset_less=not name.startswith("valid"))
            m.d.sync += reg.eq(value)
            return reg

        # S1: memory data out. The first neuron of a word latches the accumulator word and
        # clears it in its bank.
        v1 = stage("valid1", sweep_issue)
        n1 = stage("neuron1", sweep_neuron)
        lane1 = stage("lane1", sweep_lane)
        word1 = stage("word1", sweep_word)
        acc_word = Signal(acc_layout)
        first_of_word = v1 & (lane1 == 0)
        with m.If(first_of_word):
            m.d.sync += acc_word.eq(Mux(sweep_bank, acc_rd[1].data.as_value(),
                                        acc_rd[0].data.as_value()))
        m.d.comb += [sweep_clear.eq(first_of_word), sweep_clear_word.eq(word1)]

        v2 = stage("valid2", v1)
        n2 = stage("neuron2", n1)
        lane2 = stage("lane2", lane1)
        bias2 = stage("bias2", neuron_rd.data.bias)
        profile2 = stage("profile2", neuron_rd.data.profile)
        u2 = stage("u2", state_rd["u"].data)
        v_2 = stage("v2", state_rd["v"].data)
        refr2 = stage("refractory2", state_rd["refractory"].data)
        theta2 = stage("theta2", state_rd["theta"].data)

        # S2: decay factors (read from the profile), the accumulator lane, magnitudes
        def profile_address(port, stage_index):
            """Address a profile memory from the sweep (or from a request while one runs)."""
            m.d.comb += port.addr.eq(Mux(mem_access, req_profile, stage_index))

        profile_address(profile_decay_rd, profile2)
        v3 = stage("valid3", v2)
        n3 = stage("neuron3", n2)
        factor3 = {x: profile_decay_rd.data[i] for i, x in enumerate(("u", "v", "theta"))}
        acc3 = stage("acc3", acc_word[lane2] if P > 1 else acc_word[0], signed(ACC_BITS))
        raw2 = {"u": u2, "v": v_2, "theta": theta2}
        negative3 = {x: stage(f"negative_{x}3", raw2[x] < 0) for x in raw2}
        magnitude3 = {x: stage(f"magnitude_{x}3", Mux(raw2[x] < 0, -raw2[x], raw2[x]),
                               unsigned(STATE_BITS)) for x in raw2}
        bias3 = stage("bias3", bias2)
        refr3 = stage("refractory3", refr2)
        profile3 = stage("profile3", profile2)

        def carry(name, value, count, first):
            """Pass `value` through `count` further pipeline registers."""
            for k in range(first, first + count):
                value = stage(f"{name}{k}", value)
            return value

        # S3: partial products |x|[23:12] * f and |x|[11:0] * f; the weight-exponent shift
        v4 = stage("valid4", v3)
        n4 = stage("neuron4", n3)
        half = DECAY_BITS
        high4 = {x: stage(f"high_{x}4", magnitude3[x][half:] * factor3[x]) for x in raw2}
        low4 = {x: stage(f"low_{x}4", magnitude3[x][:half] * factor3[x]) for x in raw2}
        shifted4 = stage("shifted4", acc3 << weight_exp)

        # S4: |x| * f >> 12 = high + (low >> 12)
        v5 = stage("valid5", v4)
        n5 = stage("neuron5", n4)
        decayed_magnitude5 = {x: stage(f"decayed_magnitude_{x}5", high4[x] + (low4[x] >> half),
                                       unsigned(STATE_BITS + 1)) for x in raw2}
        negative5 = {x: carry(f"negative_{x}", negative3[x], 2, 4) for x in raw2}
        shifted5 = stage("shifted5", shifted4)
        profile5 = carry("profile", profile3, 2, 4)

        # S5: restore the sign (rounding toward zero); threshold and theta_plus of the profile
        profile_address(profile_threshold_rd, profile5)
        v6 = stage("valid6", v5)
        n6 = stage("neuron6", n5)
        decayed6 = {x: stage(f"decayed_{x}6", Mux(negative5[x], -decayed_magnitude5[x],
                                                   decayed_magnitude5[x]),
                             signed(STATE_BITS + 2)) for x in raw2}
        shifted6 = stage("shifted6", shifted5)
        threshold6 = profile_threshold_rd.data[0]
        theta_plus6 = profile_threshold_rd.data[1]
        bias6 = carry("bias", bias3, 3, 4)
        refr6 = carry("refractory", refr3, 3, 4)
        profile6 = stage("profile6", profile5)

        # S6: u' = sat(decay(u) + (acc << exp)); decay(v) + bias; threshold + theta;
        #     theta + theta_plus (saturating)
        v7 = stage("valid7", v6)
        n7 = stage("neuron7", n6)
        u7 = stage("u7", _saturate(decayed6["u"] + shifted6, STATE_BITS), signed(STATE_BITS))
        v_bias7 = stage("v_bias7", decayed6["v"] + bias6, signed(STATE_BITS + 3))
        effective7 = stage("effective7", threshold6 + decayed6["theta"], signed(STATE_BITS + 3))
        theta7 = stage("theta7", decayed6["theta"][:STATE_BITS].as_signed(), signed(STATE_BITS))
        theta_bumped7 = stage("theta_bumped7", _saturate(decayed6["theta"] + theta_plus6, STATE_BITS),
                              signed(STATE_BITS))
        refr7 = stage("refractory7", refr6)
        profile7 = stage("profile7", profile6)

        # S7: v' = sat(decay(v) + u' + bias)
        v8 = stage("valid8", v7)
        n8 = stage("neuron8", n7)
        v_new8 = stage("v_new8", _saturate(v_bias7 + u7, STATE_BITS), signed(STATE_BITS))
        u8 = stage("u8", u7)
        effective8 = stage("effective8", effective7)
        theta8 = stage("theta8", theta7)
        theta_bumped8 = stage("theta_bumped8", theta_bumped7)
        refr8 = stage("refractory8", refr7)
        profile8 = stage("profile8", profile7)

        # S8: compare against threshold + theta (one subtraction gives both the comparison and
        # the subtract-reset value); the reset fields of the profile
        profile_address(profile_v_reset_rd, profile8)
        profile_address(profile_reset_rd, profile8)
        v9 = stage("valid9", v8)
        n9 = stage("neuron9", n8)
        difference = v_new8 - effective8
        active8 = refr8 == 0
        fired9 = stage("fired9", active8 & (difference >= 0))
        active9 = stage("active9", active8)
        difference9 = stage("difference9", difference, signed(STATE_BITS + 4))
        v_new9 = stage("v_new9", v_new8)
        u9 = stage("u9", u8)
        theta9 = stage("theta9", theta8)
        theta_bumped9 = stage("theta_bumped9", theta_bumped8)
        refr9 = stage("refractory9", refr8)
        v_reset9 = profile_v_reset_rd.data
        reset_mode9 = profile_reset_rd.data[0][0]
        refractory_period9 = profile_reset_rd.data[1]

        # S9: write back the state (v only if not refractory); a spike goes into the FIFO
        subtracted = _saturate(difference9, STATE_BITS)
        v_final = Mux(fired9, Mux(reset_mode9, subtracted, v_reset9), v_new9)
        refr_final = Mux(fired9, refractory_period9, Mux(active9, 0, refr9 - 1))
        theta_final = Mux(fired9, theta_bumped9, theta9)
        for name, value, enable in (("u", u9, 1), ("v", v_final, active9),
                                    ("refractory", refr_final, 1), ("theta", theta_final, 1)):
            with m.If(v9):
                m.d.comb += [state_wr[name].addr.eq(n9), state_wr[name].data.eq(value),
                             state_wr[name].en.eq(enable)]
            with m.Else():
                m.d.comb += [state_wr[name].addr.eq(req_neuron),
                             state_wr[name].data.eq(request.data),
                             state_wr[name].en.eq(state_write_request[name])]
        m.d.sync += Assert(~(v9 & mem_access), "state written by the sweep and a request at once")
        m.d.comb += [spike_fifo.w_en.eq(v9 & fired9), spike_fifo.w_data.eq(n9)]
        with m.If(spike_fifo.w_en):
            m.d.sync += Assert(spike_fifo.w_rdy, "spike FIFO overflow")
        m.d.comb += sweep_in_pipeline.eq(v1 | v2 | v3 | v4 | v5 | v6 | v7 | v8 | v9)

        # a credit comes back when a neuron leaves the pipeline without a spike, or a spike
        # leaves the FIFO
        m.d.comb += credit_return.eq((v9 & ~fired9) + (self.spike_out.valid & self.spike_out.ready))
        m.d.sync += credits.eq(credits - sweep_issue + credit_return)

        return m

