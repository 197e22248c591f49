"""The neuron core: event-driven synaptic integration and a pipelined CUBA-LIF update sweep.

One :class:`NeuronCore` holds `neurons` neurons time-multiplexed over block RAM, `axons` input
axons and a dense ``axons x neurons`` int8 crossbar packed `lanes` weights per memory word. It
computes exactly what :meth:`neurofabric.host.model.ChipModel.step` computes for one core
(docs/core.md describes the pipelines and their cycle behaviour; docs/semantics.md the
arithmetic). With ``learning=True`` it also runs the model's STDP learning phase after each
update sweep (docs/learning_hw.md).
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
    LFSR_BITS,
    LFSR_TAPS,
    PROFILE_BITS,
    PROFILE_COUNT,
    REFRACTORY_BITS,
    STATE_BITS,
    STDP_SHIFT_MAX,
    TRACE_BITS,
    WEIGHT_BITS,
    CoreRegister,
    MemorySpace,
    MemRequest,
    ProfileField,
    StateField,
    StdpField,
    signed_range,
)

__all__ = ["NeuronCore", "CoreConfigError", "lfsr_seed_value"]

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
    """Clamp a signed value (wider than `bits`) to the `bits`-wide signed range. The value is in
    range when its bits from `bits - 1` up are all equal (a balanced reduction, not a compare
    along a carry chain); otherwise its sign picks the bound."""
    lo, hi = signed_range(bits)
    top = value[bits - 1:]
    in_range = top.all() | ~top.any()
    return Mux(in_range, value[:bits].as_signed(), Mux(value[-1], lo, hi))


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

    def __init__(self, neurons, axons, lanes, learning=False, *, request_held=False):
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
        if not isinstance(learning, bool):
            raise CoreConfigError(f"learning must be True or False, not {learning!r}")
        if not isinstance(request_held, bool):
            raise CoreConfigError(f"request_held must be True or False, not {request_held!r}")
        self._MustUse__silence = False
        self.neurons, self.axons, self.lanes, self.learning = neurons, axons, lanes, learning
        self.request_held = request_held
        self.words = neurons // lanes          #: memory words per weight row / accumulator bank
        members = {
            "axon_in": In(stream.Signature(range(axons))),
            "spike_out": Out(stream.Signature(range(neurons))),
            "step": In(1),
            "busy": Out(1),
            "mem": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(32)),
        }
        if learning:
            members.update({"learn": In(1), "reward": In(signed(8))})
        super().__init__(members)

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

        # the per-neuron words, in two memories written per byte: `state_mem` holds what the
        # sweep needs first (read at S0): u, v, theta and the profile index; `neuron_mem` what
        # it needs later (read at S4, so no pipeline register carries them): the bias and the
        # refractory counter. The sweep writes both back at S9.
        state_fields = {
            "u": (0, signed(STATE_BITS)), "v": (STATE_BITS, signed(STATE_BITS)),
            "theta": (2 * STATE_BITS, signed(STATE_BITS)), "profile": (3 * STATE_BITS, unsigned(PROFILE_BITS)),
        }
        neuron_fields = {"bias": (0, signed(STATE_BITS)), "refractory": (STATE_BITS, unsigned(REFRACTORY_BITS))}
        m.submodules.state_mem = state_mem = Memory(shape=unsigned(3 * STATE_BITS + 8), depth=N, init=[])
        state_rd = state_mem.read_port(transparent_for=())
        state_wr = state_mem.write_port(granularity=8)
        m.submodules.neuron_mem = neuron_mem = Memory(shape=unsigned(STATE_BITS + 8), depth=N, init=[])
        neuron_rd = neuron_mem.read_port(transparent_for=())
        neuron_wr = neuron_mem.write_port(granularity=8)

        def fields_of(word, fields):
            return {name: word[offset:offset + shape.width].as_signed() if shape.signed
                    else word[offset:offset + shape.width]
                    for name, (offset, shape) in fields.items()}
        state_read = fields_of(state_rd.data, state_fields)
        neuron_read = fields_of(neuron_rd.data, neuron_fields)

        def field_bytes(fields, name):
            """The write-enable bits of field `name` of a word of `fields`."""
            offset, shape = fields[name]
            return ((1 << ((shape.width + 7) // 8)) - 1) << (offset // 8)

        # profiles: one memory per group of fields read at the same sweep stage, 8 entries each
        # (LUT RAM on ECP5, EBR on iCE40; 120 bits: 8 iCE40 block RAMs, 16 bits wide each).
        # Decays are stored as factors 4096 - d, with the reset mode (read with them and carried
        # to the reset stage): du [0:13], dv [13:26], dtheta [26:39], reset_mode [39].
        factor_bits = DECAY_BITS + 1
        m.submodules.profile_decay_mem = profile_decay_mem = Memory(
            shape=unsigned(3 * factor_bits + 1), depth=PROFILE_COUNT,
            init=[DECAY_ONE * (1 + (1 << factor_bits) + (1 << 2 * factor_bits))] * PROFILE_COUNT)
        m.submodules.profile_threshold_mem = profile_threshold_mem = Memory(
            shape=data.ArrayLayout(signed(STATE_BITS), 2), depth=PROFILE_COUNT,
            init=[[DEFAULT_THRESHOLD, 0]] * PROFILE_COUNT)   # threshold, theta_plus
        # v_reset [0:24], refractory period [24:32]
        m.submodules.profile_reset_mem = profile_reset_mem = Memory(
            shape=unsigned(STATE_BITS + REFRACTORY_BITS), depth=PROFILE_COUNT, init=[])
        profile_decay_rd = profile_decay_mem.read_port(transparent_for=())
        profile_decay_wr = profile_decay_mem.write_port(granularity=1)      # one bit per enable bit
        profile_threshold_rd = profile_threshold_mem.read_port(transparent_for=())
        profile_threshold_wr = profile_threshold_mem.write_port(granularity=1)
        profile_reset_rd = profile_reset_mem.read_port(transparent_for=())
        profile_reset_wr = profile_reset_mem.write_port(granularity=8)
        decay_factor = {name: profile_decay_rd.data[k * factor_bits:(k + 1) * factor_bits]
                        for k, name in enumerate(("u", "v", "theta"))}
        profile_reset_mode = profile_decay_rd.data[3 * factor_bits]
        profile_v_reset = profile_reset_rd.data[:STATE_BITS].as_signed()
        profile_refractory = profile_reset_rd.data[STATE_BITS:]
        weight_exp = Signal(WEIGHT_EXP_BITS)

        # with learning, the FIFO holds a whole sweep's spikes: the sweep (and the learning phase
        # after it, during which axon_in is held off) never waits on spike_out
        spike_depth = max(SPIKE_FIFO_DEPTH, N + 1) if self.learning else SPIKE_FIFO_DEPTH
        m.submodules.spike_fifo = spike_fifo = fifo.SyncFIFOBuffered(
            width=max(1, ceil_log2(N)), depth=spike_depth)
        m.d.comb += [
            self.spike_out.valid.eq(spike_fifo.r_rdy),
            self.spike_out.payload.eq(spike_fifo.r_data),
            spike_fifo.r_en.eq(self.spike_out.ready),
        ]

        # --- memory requests: accept (cycle 0), access (cycle 1), respond (cycle 2) -----------
        request = self.mem.payload if self.request_held else Signal(MemRequest)
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
        if self.learning:
            in_space.update({
                MemorySpace.CORE: req_addr <= CoreRegister.LEARNING.value,
                MemorySpace.STDP: req_addr < len(StdpField),
                MemorySpace.TRACE: req_addr < A + N,
                MemorySpace.PLASTIC: req_addr < A,
            })
        req_hit = {space: (request.mem == space) & cond for space, cond in in_space.items()}
        weight_exp_hit = req_hit[MemorySpace.CORE]
        if self.learning:
            weight_exp_hit = weight_exp_hit & (req_addr == CoreRegister.WEIGHT_EXP.value)

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
        credits = Signal(range(spike_depth), init=spike_depth - 1)
        sweep_issue = Signal()

        busy = Signal()
        busy_terms = (iss_active | valid[1] | valid[2] | valid[3] | sweep_pending
                      | sweep_issuing | (credits != spike_depth - 1))
        input_ready = ~mem_access & (~iss_active | iss_last)
        if self.learning:
            learn_busy = Signal()   # learning phase (or the pre-event flag clear) running
            learn_hold = Signal()   # axon_in held off: this step learns, or is learning
            busy_terms |= learn_busy
            input_ready &= ~learn_hold
        m.d.comb += busy.eq(busy_terms)
        m.d.comb += self.busy.eq(busy)

        # --- memory request handling ---------------------------------------------------------
        m.d.comb += self.mem.ready.eq(~busy & ~self.step & ~mem_access & ~mem_collect
                                      & ~mem_format & ~resp_valid & ~self.axon_in.valid)
        m.d.sync += mem_access.eq(self.mem.valid & self.mem.ready)
        with m.If(self.mem.valid & self.mem.ready):
            if not self.request_held:
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
            profile_decay_wr.data.eq(Cat(*[(DECAY_ONE - decay_value)[:factor_bits]] * 3,
                                         request.data[0])),
            profile_threshold_wr.addr.eq(req_profile),
            profile_threshold_wr.data.eq(Cat(*[request.data[:STATE_BITS]] * 2)),
            profile_reset_wr.addr.eq(req_profile),
            profile_reset_wr.data.eq(Cat(request.data[:STATE_BITS], request.data[:REFRACTORY_BITS])),
        ]
        field_bits = (1 << factor_bits) - 1
        with m.If(profile_write):
            with m.Switch(req_profile_field):
                for field, port, enable in (
                        (ProfileField.DU, profile_decay_wr, field_bits),
                        (ProfileField.DV, profile_decay_wr, field_bits << factor_bits),
                        (ProfileField.DTHETA, profile_decay_wr, field_bits << 2 * factor_bits),
                        (ProfileField.RESET_MODE, profile_decay_wr, 1 << 3 * factor_bits),
                        (ProfileField.THRESHOLD, profile_threshold_wr, 0b01),
                        (ProfileField.THETA_PLUS, profile_threshold_wr, 0b10),
                        (ProfileField.V_RESET, profile_reset_wr, 0b0111),
                        (ProfileField.REFRACTORY, profile_reset_wr, 0b1000)):
                    with m.Case(field.value):
                        m.d.comb += port.en.eq(enable)
        with m.If(mem_collect):
            # the profile memories were addressed by the request in the access cycle; a decay
            # is 4096 - its stored factor (one subtractor for the three)
            factor_read = Signal(factor_bits)
            with m.Switch(req_profile_field):
                for field, name in ((ProfileField.DU, "u"), (ProfileField.DV, "v"),
                                    (ProfileField.DTHETA, "theta")):
                    with m.Case(field.value):
                        m.d.comb += factor_read.eq(decay_factor[name])
            with m.Switch(req_profile_field):
                for field, value in (
                        ((ProfileField.DU, ProfileField.DV, ProfileField.DTHETA), DECAY_ONE - factor_read),
                        ((ProfileField.THRESHOLD,), profile_threshold_rd.data[0]),
                        ((ProfileField.THETA_PLUS,), profile_threshold_rd.data[1]),
                        ((ProfileField.V_RESET,), profile_v_reset),
                        ((ProfileField.RESET_MODE,), profile_reset_mode),
                        ((ProfileField.REFRACTORY,), profile_refractory)):
                    with m.Case(*(f.value for f in field)):
                        m.d.sync += profile_read.eq(value)     # sign-extends signed fields
        with m.If(mem_access):
            with m.If(write & weight_exp_hit):
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

        # a request addresses both per-neuron memories (the sweep: state_mem at S0, neuron_mem
        # at S4, below)
        m.d.comb += state_rd.addr.eq(Mux(mem_access, req_neuron, sweep_neuron))
        # request writes: neuron_mem in the access cycle; state_mem one cycle later (collect),
        # from the sweep's last registers, which take the request's word in the access cycle
        # (S9 below: no write-data multiplexer in front of the memory)
        state_write_request = Signal(len(state_wr.en))
        neuron_write_request = Signal(len(neuron_wr.en))
        collect_write = mem_collect & request.write
        with m.If(write & req_hit[MemorySpace.NEURON]):
            m.d.comb += neuron_write_request.eq(field_bytes(neuron_fields, "bias"))
        with m.If(collect_write & req_hit[MemorySpace.NEURON]):
            m.d.comb += state_write_request.eq(field_bytes(state_fields, "profile"))
        with m.If(write & req_hit[MemorySpace.STATE] & (req_field == StateField.REFRACTORY.value)):
            m.d.comb += neuron_write_request.eq(field_bytes(neuron_fields, "refractory"))
        with m.If(collect_write & req_hit[MemorySpace.STATE]):
            with m.Switch(req_field):
                for field, name in ((StateField.U, "u"), (StateField.V, "v"), (StateField.THETA, "theta")):
                    with m.Case(field.value):
                        m.d.comb += state_write_request.eq(field_bytes(state_fields, name))

        # collect: the memory outputs go straight into registers (block RAM clock-to-out is
        # slow): the first registers of the integration and sweep pipelines, which take them in
        # every cycle; format: the response word is picked from them one cycle later
        raw_weights = Signal(WEIGHT_BITS * P)
        raw_bias = Signal(signed(STATE_BITS))
        raw_profile = Signal(PROFILE_BITS)
        raw_state = {name: Signal(shape, name=f"raw_{name}") for name, shape in (
            ("u", signed(STATE_BITS)), ("v", signed(STATE_BITS)), ("theta", signed(STATE_BITS)),
            ("refractory", unsigned(REFRACTORY_BITS)))}
        with m.If(mem_format):
            m.d.sync += resp_valid.eq(1)
            m.d.sync += resp_data.eq(0)
            with m.If(~request.write):
                with m.If(req_hit[MemorySpace.WEIGHT]):
                    weight = (raw_weights.word_select(req_lane, WEIGHT_BITS) if P > 1
                              else raw_weights).as_signed()
                    m.d.sync += resp_data.eq(weight)
                with m.If(req_hit[MemorySpace.NEURON]):
                    m.d.sync += resp_data.eq(Cat(raw_bias, raw_profile))
                with m.If(req_hit[MemorySpace.PROFILE]):
                    m.d.sync += resp_data.eq(profile_read)
                with m.If(req_hit[MemorySpace.STATE]):
                    with m.Switch(req_field):
                        for field, name in ((StateField.U, "u"), (StateField.V, "v"),
                                            (StateField.REFRACTORY, "refractory"),
                                            (StateField.THETA, "theta")):
                            with m.Case(field.value):
                                m.d.sync += resp_data.eq(raw_state[name])  # sign-extends u, v, theta
                with m.If(weight_exp_hit):
                    m.d.sync += resp_data.eq(weight_exp)

        # --- integration: issue -> memory out -> add -> write back ----------------------------
        with m.If(self.step):
            m.d.sync += [int_bank.eq(~int_bank), sweep_bank.eq(int_bank), sweep_pending.eq(1)]

        m.d.comb += self.axon_in.ready.eq(input_ready)
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

        def stage(name, value, shape=None):
            """A pipeline register holding `value` one cycle later."""
            # only the valid bits need a reset; data registers are reset-less (cheaper)
            reg = Signal(shape if shape is not None else value.shape(), name=f"sweep_{name}",
                         reset_less=not name.startswith("valid"))
            m.d.sync += reg.eq(value)
            return reg

        def profile_address(port, index):
            """Address a profile memory from the sweep (or from a request while one runs)."""
            m.d.comb += port.addr.eq(Mux(mem_access, req_profile, index))

        def counter(name, valid):
            """The index of the neuron at the stage whose valid bit is `valid`: neurons pass
            every stage in order, one per valid cycle."""
            index = Signal(range(N), name=f"sweep_{name}")
            with m.If(sweep_pending):
                m.d.sync += index.eq(0)
            with m.Elif(valid):
                m.d.sync += index.eq(Mux(index == N - 1, 0, index + 1))
            return index

        # S1: state_mem data out; its profile index addresses the decay factors
        v1 = stage("valid1", sweep_issue)
        profile_address(profile_decay_rd, state_read["profile"])

        # S2: the decay factors and the reset mode (profile_decay_mem) out. The partial
        # products of decay(x) = (x * f + (x < 0 ? 4095 : 0)) >> 12, which rounds toward zero
        # as the model does: x = 4096 xh + xl, so decay(x) = xh f + ((xl f + r) >> 12)
        # (xh: x >> 12, signed; xl: x[11:0]; one DSP each). The accumulator word and the bias
        # and refractory counter (neuron_mem) of the neuron are read.
        v2 = stage("valid2", v1)
        profile2 = stage("profile2", state_read["profile"])
        u2 = stage("u2", state_read["u"])
        v_2 = stage("v2", state_read["v"])
        theta2 = stage("theta2", state_read["theta"])
        raw2 = {"u": u2, "v": v_2, "theta": theta2}
        half = DECAY_BITS
        sweep_neuron2 = counter("neuron2", v2)
        word2 = Signal(range(W))
        lane2 = Signal(range(P))
        m.d.comb += [word2.eq(sweep_neuron2 >> lane_bits),
                     lane2.eq(sweep_neuron2[:lane_bits] if lane_bits else 0)]
        for b in range(2):
            with m.If(v2 & (sweep_bank == b)):
                m.d.comb += acc_rd[b].addr.eq(word2)
                m.d.sync += Assert(~(iss_active & (iss_bank == b)),
                                   "accumulator bank read by integration and sweep at once")
            with m.Else():
                m.d.comb += acc_rd[b].addr.eq(iss_word)
        m.d.comb += neuron_rd.addr.eq(Mux(mem_access, req_neuron, sweep_neuron2))

        def carry(name, value, count, first):
            """Pass `value` through `count` further pipeline registers."""
            for k in range(first, first + count):
                value = stage(f"{name}{k}", value)
            return value

        # the reset mode is read with the decay factors (S2) and carried to the reset (S6)
        reset_mode6 = carry("reset_mode", profile_reset_mode, 4, 3)

        # S3: the products out; the accumulator word out (the first neuron of a word latches it
        # and clears it in its bank); neuron_mem out; the threshold memory is addressed
        v3 = stage("valid3", v2)
        high3 = {x: stage(f"high_{x}3", raw2[x][half:].as_signed() * decay_factor[x]) for x in raw2}
        low3 = {x: stage(f"low_{x}3", raw2[x][:half] * decay_factor[x]) for x in raw2}
        negative3 = {x: stage(f"negative_{x}3", raw2[x] < 0) for x in raw2}
        lane3 = stage("lane3", lane2)
        word3 = stage("word3", word2)
        profile3 = stage("profile3", profile2)
        acc_word = Signal(acc_layout)
        acc_data = Signal(acc_layout)
        m.d.comb += acc_data.eq(Mux(sweep_bank, acc_rd[1].data.as_value(), acc_rd[0].data.as_value()))
        first_of_word = v3 & (lane3 == 0)
        with m.If(first_of_word):
            m.d.sync += acc_word.eq(acc_data)
        m.d.comb += [sweep_clear.eq(first_of_word), sweep_clear_word.eq(word3)]
        # the neuron's accumulator lane: lane 0 from the memory, the others from the latched word
        acc_lane3 = Mux(lane3 == 0, acc_data[0], acc_word[lane3]) if P > 1 else acc_data[0]
        profile_address(profile_threshold_rd, profile3)

        # S4: decay(x); the accumulator lane shifted by the weight exponent; the bias and the
        # refractory counter
        v4 = stage("valid4", v3)
        decayed4 = {x: stage(f"decayed_{x}4",
                             high3[x] + (low3[x] >> half) + (negative3[x] & (low3[x][:half] != 0)),
                             signed(STATE_BITS + 2)) for x in raw2}
        shifted4 = stage("shifted4", acc_lane3 << weight_exp, signed(ACC_BITS + (1 << WEIGHT_EXP_BITS) - 1))
        bias4 = stage("bias4", neuron_read["bias"])
        refr4 = stage("refractory4", neuron_read["refractory"])
        profile4 = stage("profile4", profile3)
        threshold4 = profile_threshold_rd.data[0]
        theta_plus4 = profile_threshold_rd.data[1]
        # the request path reads the memories through the pipeline's first registers
        m.d.comb += [raw_bias.eq(bias4), raw_profile.eq(profile2),
                     raw_state["u"].eq(u2), raw_state["v"].eq(v_2), raw_state["theta"].eq(theta2),
                     raw_state["refractory"].eq(refr4), raw_weights.eq(weights2)]

        # S4 -> S5: u' = sat(decay(u) + (acc << exp)); decay(v) + bias; threshold + theta;
        #           theta + theta_plus (saturating)
        v5 = stage("valid5", v4)
        u5 = stage("u5", _saturate(decayed4["u"] + shifted4, STATE_BITS), signed(STATE_BITS))
        v_bias5 = stage("v_bias5", decayed4["v"] + bias4, signed(STATE_BITS + 3))
        effective5 = stage("effective5", threshold4 + decayed4["theta"], signed(STATE_BITS + 3))
        theta5 = stage("theta5", decayed4["theta"][:STATE_BITS].as_signed(), signed(STATE_BITS))
        theta_bumped5 = stage("theta_bumped5", _saturate(decayed4["theta"] + theta_plus4, STATE_BITS),
                              signed(STATE_BITS))
        refr5 = stage("refractory5", refr4)
        profile5 = stage("profile5", profile4)

        # S5 -> S6: v' = sat(decay(v) + u' + bias); compare against threshold + theta (one
        # subtraction gives both the comparison and the subtract-reset value); the reset fields
        # of the profile
        profile_address(profile_reset_rd, profile5)
        v6 = stage("valid6", v5)
        n6 = counter("neuron6", v6)
        v_new5 = _saturate(v_bias5 + u5, STATE_BITS)
        # d = v' - (threshold + theta) without waiting for the saturation of v': the unsaturated
        # v_bias + u' - effective in one carry chain (a carry-save layer folds the three
        # operands), or bound - effective where v' saturates
        width = STATE_BITS + 5
        csa_a, csa_b, csa_c = (Signal(width, name=f"sweep_csa_{n}") for n in "abc")
        m.d.comb += [csa_a.eq(v_bias5), csa_b.eq(u5), csa_c.eq(~effective5.as_signed())]
        unsaturated = Signal(signed(width))
        m.d.comb += unsaturated.eq((csa_a ^ csa_b ^ csa_c)
                                   + Cat(Const(1, 1), ((csa_a & csa_b) | (csa_a & csa_c) | (csa_b & csa_c))[:-1]))
        sum5 = Signal(signed(STATE_BITS + 4))
        m.d.comb += sum5.eq(v_bias5 + u5)
        sum_top = sum5[STATE_BITS - 1:]
        lo, hi = signed_range(STATE_BITS)
        difference = Mux(sum_top.all() | ~sum_top.any(), unsaturated,
                         Mux(sum5[-1], lo - effective5, hi - effective5))
        active5 = refr5 == 0
        fired5 = Signal()
        m.d.comb += fired5.eq(active5 & (difference >= 0))
        fired6 = stage("fired6", fired5 & ~mem_access)
        active6 = stage("active6", active5)
        difference6 = stage("difference6", difference, signed(STATE_BITS + 4))
        # (a request's word in the access cycle: state_mem's write data in the collect cycle)
        request_word = request.data[:STATE_BITS].as_signed()
        v_new6 = stage("v_new6", Mux(mem_access, request_word, v_new5), signed(STATE_BITS))
        u6 = stage("u6", Mux(mem_access, request_word, u5))
        theta_final6 = stage("theta_final6", Mux(mem_access, request_word,
                                                 Mux(fired5, theta_bumped5, theta5)))
        refr6 = stage("refractory6", refr5)

        # S6: write back the state (v only if not refractory); a spike goes into the FIFO
        subtracted = _saturate(difference6, STATE_BITS)
        v_final = Mux(fired6, Mux(reset_mode6, subtracted, profile_v_reset), v_new6)
        refr_final = Mux(fired6, profile_refractory, Mux(active6, 0, refr6 - 1))
        # (the profile index and the bias are written by requests only)
        m.d.comb += [
            state_wr.data.eq(Cat(u6, v_final, theta_final6,
                                 request.data[STATE_BITS:STATE_BITS + PROFILE_BITS])),
            neuron_wr.data.eq(Cat(request.data[:STATE_BITS],
                                  Mux(v6, refr_final, request.data[:REFRACTORY_BITS]))),
        ]
        with m.If(v6):
            m.d.comb += [state_wr.addr.eq(n6), neuron_wr.addr.eq(n6),
                         state_wr.en.eq(field_bytes(state_fields, "u") | field_bytes(state_fields, "theta")
                                        | Mux(active6, field_bytes(state_fields, "v"), 0)),
                         neuron_wr.en.eq(field_bytes(neuron_fields, "refractory"))]
        with m.Else():
            m.d.comb += [state_wr.addr.eq(req_neuron), neuron_wr.addr.eq(req_neuron),
                         state_wr.en.eq(state_write_request), neuron_wr.en.eq(neuron_write_request)]
        m.d.sync += Assert(~(v6 & (mem_access | mem_collect)),
                           "state written by the sweep and a request at once")
        m.d.comb += [spike_fifo.w_en.eq(v6 & fired6), spike_fifo.w_data.eq(n6)]
        with m.If(spike_fifo.w_en):
            m.d.sync += Assert(spike_fifo.w_rdy, "spike FIFO overflow")
        m.d.comb += sweep_in_pipeline.eq(v1 | v2 | v3 | v4 | v5 | v6)
        # the last stage, for the learning machinery
        sweep_last_valid, sweep_last_neuron, sweep_last_fired = v6, n6, fired6

        # a credit comes back when a neuron leaves the pipeline without a spike, or a spike
        # leaves the FIFO
        m.d.comb += credit_return.eq((v6 & ~fired6) + (self.spike_out.valid & self.spike_out.ready))
        m.d.sync += credits.eq(credits - sweep_issue + credit_return)

        if self.learning:
            self._elaborate_learning(m, locals())
        return m


    def _elaborate_learning(self, m, L):
        """The STDP machinery (docs/learning_hw.md): trace and flag memories, the learning-phase
        sequencer and the weight read-modify-write pipeline, added to the core's module `m`
        (`L`: the names of :meth:`elaborate`)."""
        N, A, P, W = self.neurons, self.axons, self.lanes, self.words
        lane_bits = exact_log2(P)
        T = TRACE_BITS
        trace_max = (1 << T) - 1
        request, req_addr, req_hit = L["request"], L["req_addr"], L["req_hit"]
        mem_access, mem_collect, mem_format = L["mem_access"], L["mem_collect"], L["mem_format"]
        write, resp_data = L["write"], L["resp_data"]
        weight_rd, weight_wr = L["weight_rd"], L["weight_wr"]

        # --- configuration (CoreRegister.LEARNING, MemorySpace.STDP) and the LFSRs ------------
        core_learning = Signal()
        config = {field: Signal(shape, init=value, name=f"stdp_{field.name.lower()}")
                  for field, (shape, value) in STDP_DEFAULTS.items()}
        lfsr = [Signal(LFSR_BITS, init=lfsr_seed_value(STDP_DEFAULTS[StdpField.SEED][1], lane),
                       name=f"lfsr{lane}") for lane in range(P)]

        # --- memories ---------------------------------------------------------------------------
        m.submodules.pre_trace_mem = pre_mem = Memory(shape=unsigned(T), depth=A, init=[])
        pre_rd, pre_wr = pre_mem.read_port(transparent_for=()), pre_mem.write_port()
        m.submodules.plastic_mem = plastic_mem = Memory(shape=unsigned(1), depth=A, init=[])
        plastic_rd, plastic_wr = plastic_mem.read_port(transparent_for=()), plastic_mem.write_port()
        post_layout = data.ArrayLayout(unsigned(T), P)
        m.submodules.post_trace_mem = post_mem = Memory(shape=post_layout, depth=W, init=[])
        post_rd = post_mem.read_port(transparent_for=())
        post_wr = post_mem.write_port(granularity=1)      # one trace per enable bit
        m.submodules.fired_mem = fired_mem = Memory(shape=unsigned(P), depth=W, init=[])
        fired_rd = fired_mem.read_port(transparent_for=())
        fired_wr = fired_mem.write_port(granularity=1)
        event_rd, event_wr = [], []
        for b in range(2):      # pre-event flags, one memory per accumulator bank
            event_mem = Memory(shape=unsigned(1), depth=A, init=[])
            m.submodules[f"pre_event_bank{b}"] = event_mem
            event_rd.append(event_mem.read_port(transparent_for=()))
            event_wr.append(event_mem.write_port())

        # an accepted event flags its axon in its bank
        accept, payload, int_bank, sweep_bank = (L["accept"], self.axon_in.payload, L["int_bank"],
                                                 L["sweep_bank"])
        event_bank = Mux(self.step, ~int_bank, int_bank)
        for b in range(2):
            m.d.comb += [event_wr[b].addr.eq(payload), event_wr[b].data.eq(1),
                         event_wr[b].en.eq(accept & (payload < A) & (event_bank == b))]

        # the sweep records every neuron's spike (S9)
        v9, n9, fired9 = L["sweep_last_valid"], L["sweep_last_neuron"], L["sweep_last_fired"]
        lane9 = n9[:lane_bits] if lane_bits else Const(0, 1)
        m.d.comb += [fired_wr.addr.eq(n9 >> lane_bits), fired_wr.data.eq(Mux(fired9, (1 << P) - 1, 0)),
                     fired_wr.en.eq(Mux(v9, 1 << lane9, 0))]

        # --- amplitude * reward, per phase (registered: config and reward are quasi-static) ---
        def amplitude(a):
            product = Signal(signed(2 * T + 1), name=f"{a.name}_reward")
            m.d.sync += product.eq(a * self.reward)
            negative = Signal(name=f"{a.name}_negative")
            magnitude = Signal(2 * T - 1, name=f"{a.name}_magnitude")    # |a * R| <= 255 * 128
            m.d.sync += [negative.eq(product < 0), magnitude.eq(Mux(product < 0, -product, product))]
            return negative, magnitude
        neg_minus, mag_minus = amplitude(config[StdpField.A_MINUS])
        neg_plus, mag_plus = amplitude(config[StdpField.A_PLUS])
        shift = config[StdpField.SHIFT]
        round_mask = Signal(STDP_SHIFT_MAX)
        m.d.comb += round_mask.eq((Const(1, STDP_SHIFT_MAX + 1) << shift) - 1)

        # trace decays as factors 4096 - d (written with the decay)
        factor = {field: Signal(DECAY_BITS + 1, init=DECAY_ONE - STDP_DEFAULTS[field][1],
                                name=f"{field.name.lower()}_factor")
                  for field in (StdpField.PRE_DECAY, StdpField.POST_DECAY)}

        def decayed(trace, field):
            """``trace * (4096 - d) >> 12`` of an unsigned trace (rounding toward zero)."""
            return ((trace * factor[field]) >> DECAY_BITS)[:T]

        def incremented(trace, increment):
            total = trace + increment
            return Mux(total > trace_max, trace_max, total[:T])

        def pipe(name, value, shape=None):
            """A pipeline register holding `value` one cycle later (only valid bits are reset)."""
            reg = Signal(shape if shape is not None else value.shape(), name=name,
                         reset_less="valid" not in name)
            m.d.sync += reg.eq(value)
            return reg

        # --- weight read-modify-write pipeline ---------------------------------------------------
        # issue: read the weight word (and its traces); 1: memory data out; 2: registered data,
        # the updated lanes step their LFSRs; 3: |a R| * trace, draw & mask; 4: + draw;
        # 5: >> shift (saturated at 255, which clips the same); 6: clip(w -/+ dw) and write back
        rmw_issue = Signal()
        rmw_addr = Signal(range(A * W))
        rmw_potentiate = Signal()
        rmw_mask = Signal(P)
        rmw_valid = [rmw_issue]
        rmw_address = [rmw_addr]
        for k in range(1, 6):
            rmw_valid.append(pipe(f"rmw_valid{k}", rmw_valid[-1]))
            rmw_address.append(pipe(f"rmw_addr{k}", rmw_address[-1]))
        rmw_running = Cat(*rmw_valid[1:]).any()
        pot1 = pipe("rmw_potentiate1", rmw_potentiate)
        mask1 = pipe("rmw_mask1", rmw_mask)

        # stage 1 -> 2: the memory outputs go straight into registers; stage 2: the lanes to update
        weights = {2: L["weights2"]}       # the integration's stage-2 register of the weight word
        pot2 = pipe("rmw_potentiate2", pot1)
        mask2 = pipe("rmw_mask2", mask1)
        pre2 = pipe("rmw_pre2", pre_rd.data)
        post2 = pipe("rmw_post2", post_rd.data)
        plastic2 = pipe("rmw_plastic2", plastic_rd.data)
        enable = {2: Signal(P, name="rmw_enable2")}
        m.d.comb += enable[2].eq(Mux(rmw_valid[2], mask2 & Mux(pot2 & ~plastic2, 0, (1 << P) - 1), 0))
        trace2 = [Mux(pot2, pre2, post2[lane]) for lane in range(P)]

        # stage 2 -> 3: step the LFSRs of the updated lanes; |a R| * trace; the sign of dw
        # (depression: w - dw; potentiation: w + dw; dw has the sign of a R)
        magnitude2 = Mux(pot2, mag_plus, mag_minus)
        subtract = {3: pipe("rmw_subtract3", Mux(pot2, neg_plus, ~neg_minus))}
        product3, draw3 = [], []
        for lane in range(P):
            nxt = Signal(LFSR_BITS, name=f"lfsr{lane}_next")
            m.d.comb += nxt.eq((lfsr[lane] >> 1) ^ Mux(lfsr[lane][0], LFSR_TAPS, 0))
            with m.If(enable[2][lane]):
                m.d.sync += lfsr[lane].eq(nxt)
            product3.append(pipe(f"rmw_product{lane}_3", magnitude2 * trace2[lane], unsigned(3 * T - 1)))
            draw3.append(pipe(f"rmw_draw{lane}_3", nxt & round_mask, unsigned(STDP_SHIFT_MAX)))
        for k in range(3, 6):
            weights[k] = pipe(f"rmw_weights{k}", weights[k - 1])
            enable[k] = pipe(f"rmw_enable{k}", enable[k - 1])
            if k > 3:
                subtract[k] = pipe(f"rmw_subtract{k}", subtract[k - 1])

        # stage 3 -> 4: |m| + (draw & mask) (< 2^23: |m| <= 255 * 255 * 128)
        sum4 = [pipe(f"rmw_sum{lane}_4", product3[lane] + draw3[lane], unsigned(3 * T - 1)) for lane in range(P)]
        # stage 4 -> 5: >> shift; a change above 255 clips to a bound whatever the weight
        change5 = []
        for lane in range(P):
            shifted = sum4[lane] >> shift
            change5.append(pipe(f"rmw_change{lane}_5", Mux(shifted > 255, 255, shifted[:8]), unsigned(8)))
        # stage 5: clip(w -/+ change, w_min, w_max), written back (only the updated lanes)
        w_min, w_max = config[StdpField.W_MIN], config[StdpField.W_MAX]
        new_weights = []
        for lane in range(P):
            w = weights[5][lane]
            total = Signal(signed(WEIGHT_BITS + 2), name=f"rmw_total{lane}")
            m.d.comb += total.eq(Mux(subtract[5], w - change5[lane], w + change5[lane]))
            bounded = Mux(total < w_min, w_min, Mux(total > w_max, w_max, total[:WEIGHT_BITS]))
            new_weights.append(bounded[:WEIGHT_BITS])
        with m.If(rmw_valid[5]):
            m.d.comb += [weight_wr.addr.eq(rmw_address[5]), weight_wr.data.eq(Cat(*new_weights)),
                         weight_wr.en.eq(enable[5])]

        # --- post-trace passes (decay before depression, increments after potentiation) -------
        # issue: read a word of post-traces and fired flags; 2: registered; 3: new traces; write
        post_issue = Signal()
        # the word counter of the post-trace passes, of a depressed row and of the fired scan
        # (one register addresses post_trace_mem and fired_mem: no address multiplexer)
        post_index = Signal(range(W + 1))
        post_is_increment = Signal()
        post_valid1 = pipe("post_valid1", post_issue)
        post_valid2 = pipe("post_valid2", post_valid1)
        post_valid3 = pipe("post_valid3", post_valid2)
        post_valid4 = pipe("post_valid4", post_valid3)
        post_word4 = pipe("post_word4", pipe("post_word3", pipe("post_word2", pipe("post_word1", post_index))))
        post_increment2 = pipe("post_increment2", pipe("post_increment1", post_is_increment))
        post_increment3 = pipe("post_increment3", post_increment2)
        post_old2 = pipe("post_old2", post_rd.data)
        post_old3 = pipe("post_old3", post_old2)
        fired3 = pipe("post_fired3", pipe("post_fired2", fired_rd.data))
        post_decayed3 = [pipe(f"post_decayed{lane}_3", decayed(post_old2[lane], StdpField.POST_DECAY))
                         for lane in range(P)]
        post_new4 = pipe("post_new4", Cat(*[
            Mux(post_increment3,
                Mux(fired3[lane], incremented(post_old3[lane], config[StdpField.POST_INCREMENT]), post_old3[lane]),
                post_decayed3[lane])
            for lane in range(P)]))
        post_running = post_valid1 | post_valid2 | post_valid3 | post_valid4
        with m.If(post_valid4):
            m.d.comb += [post_wr.addr.eq(post_word4), post_wr.data.eq(post_new4), post_wr.en.eq((1 << P) - 1)]

        # --- pre-trace updates of the axon scan: 1: registered; 2: decayed; write (+ increment)
        pre_scan = Signal()
        pre_valid1 = pipe("pre_valid1", pre_scan)
        pre_valid2 = pipe("pre_valid2", pre_valid1)
        pre_trace1 = Signal(T)
        pre_event1 = Signal()
        pre_axon1 = Signal(range(A))
        pre_decayed2 = pipe("pre_decayed2", decayed(pre_trace1, StdpField.PRE_DECAY), unsigned(T))
        pre_event2 = pipe("pre_event2", pre_event1)
        pre_axon2 = pipe("pre_axon2", pre_axon1)
        with m.If(pre_valid2):
            m.d.comb += [pre_wr.addr.eq(pre_axon2), pre_wr.en.eq(1),
                         pre_wr.data.eq(Mux(pre_event2, incremented(pre_decayed2, config[StdpField.PRE_INCREMENT]),
                                            pre_decayed2))]
        pre_running = pre_valid1 | pre_valid2

        # --- the sequencer ----------------------------------------------------------------------
        # Both scans read one entry per cycle through a 2-stage pipeline (1: memory data out,
        # 2: registered) and decide from the registers; while a row or column issues, the
        # memories' read enables and the pipeline hold, so the scan resumes without a bubble.
        def scan_pipeline(prefix, count, sources, advance, start, issue=None):
            """Entry index and registered `sources` of the entry at stage 2 (valid2)."""
            if issue is None:
                issue = Signal(range(count + 1), name=f"{prefix}_issue")
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
            return issue, valid2, index2, data2

        # the axon counter of the axon scan and of a potentiated column (one register addresses
        # the per-axon memories: no address multiplexer)
        axon_counter = Signal(range(A + 1))
        in_scan, in_row = Signal(), Signal()
        in_column_scan, in_column = Signal(), Signal()
        scan_start, column_start = Signal(), Signal()
        scan_issue, scan_valid, scan_index, scan = scan_pipeline(
            "scan", A, {"pre": pre_rd.data, "plastic": plastic_rd.data,
                        "event": Mux(sweep_bank, event_rd[1].data, event_rd[0].data)}, in_scan, scan_start,
            issue=axon_counter)
        fired_issue, fired_valid, fired_index, fired_scan = scan_pipeline(
            "fired", W, {"fired": fired_rd.data}, in_column_scan, column_start, issue=post_index)

        row_axon = Signal(range(A))
        row_addr = Signal(range(A * W))
        column_word = Signal(range(W))
        column_mask = Signal(P)
        column_addr = Signal(range(A * W))
        clear_axon = Signal(range(A))
        enabled = self.learn & core_learning
        sweep_done = ~L["sweep_pending"] & ~L["sweep_issuing"] & ~L["sweep_in_pipeline"]

        with m.FSM(name="learning") as fsm:
            with m.State("IDLE"):
                with m.If(self.step):
                    m.d.sync += clear_axon.eq(0)
                    with m.If(enabled):
                        m.next = "WAIT_SWEEP"
                    with m.Else():
                        m.next = "CLEAR"
            with m.State("CLEAR"):         # learning off: clear the swept bank's pre-event flags
                for b in range(2):
                    with m.If(sweep_bank == b):
                        m.d.comb += [event_wr[b].addr.eq(clear_axon), event_wr[b].data.eq(0),
                                     event_wr[b].en.eq(1)]
                m.d.sync += clear_axon.eq(clear_axon + 1)
                with m.If(clear_axon == A - 1):
                    m.next = "IDLE"
            with m.State("WAIT_SWEEP"):
                with m.If(sweep_done):
                    m.d.sync += post_index.eq(0)
                    m.next = "POST_DECAY"
            with m.State("POST_DECAY"):
                m.d.comb += [post_issue.eq(1), post_is_increment.eq(0)]
                m.d.sync += post_index.eq(post_index + 1)
                with m.If(post_index == W - 1):
                    m.next = "POST_DECAY_DRAIN"
            with m.State("POST_DECAY_DRAIN"):
                m.d.comb += scan_start.eq(1)
                with m.If(~post_running):
                    m.next = "SCAN"
            with m.State("SCAN"):
                # the axon at stage 2: x = decay(x) (+ increment if it had an event); clear its
                # flag; a plastic axon with an event has its row depressed
                m.d.comb += in_scan.eq(1)
                with m.If(scan_valid):
                    m.d.comb += pre_scan.eq(1)
                    m.d.sync += [pre_trace1.eq(scan["pre"]), pre_event1.eq(scan["event"]),
                                 pre_axon1.eq(scan_index)]
                    for b in range(2):
                        with m.If(sweep_bank == b):
                            m.d.comb += [event_wr[b].addr.eq(scan_index), event_wr[b].data.eq(0),
                                         event_wr[b].en.eq(1)]
                    with m.If(scan["event"] & scan["plastic"]):
                        m.d.sync += [row_axon.eq(scan_index), row_addr.eq(scan_index * W), post_index.eq(0)]
                        m.next = "ROW"
                    with m.Elif(scan_index == A - 1):
                        m.next = "DEPRESSION_DRAIN"
            with m.State("ROW"):
                m.d.comb += [in_row.eq(1), rmw_issue.eq(1), rmw_addr.eq(row_addr),
                             rmw_potentiate.eq(0), rmw_mask.eq((1 << P) - 1)]
                m.d.sync += [row_addr.eq(row_addr + 1), post_index.eq(post_index + 1)]
                with m.If(post_index == W - 1):
                    with m.If(row_axon == A - 1):
                        m.next = "DEPRESSION_DRAIN"
                    with m.Else():
                        m.next = "SCAN"
            with m.State("DEPRESSION_DRAIN"):
                m.d.comb += column_start.eq(1)
                with m.If(~rmw_running & ~pre_running):
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
                m.d.comb += [in_column.eq(1), rmw_issue.eq(1), rmw_addr.eq(column_addr),
                             rmw_potentiate.eq(1), rmw_mask.eq(column_mask)]
                m.d.sync += [axon_counter.eq(axon_counter + 1), column_addr.eq(column_addr + W)]
                with m.If(axon_counter == A - 1):
                    with m.If(column_word == W - 1):
                        m.next = "POTENTIATION_DRAIN"
                    with m.Else():
                        m.next = "COLUMN_SCAN"
            with m.State("POTENTIATION_DRAIN"):
                with m.If(~rmw_running):
                    m.d.sync += post_index.eq(0)
                    m.next = "POST_INCREMENT"
            with m.State("POST_INCREMENT"):
                m.d.comb += [post_issue.eq(1), post_is_increment.eq(1)]
                m.d.sync += post_index.eq(post_index + 1)
                with m.If(post_index == W - 1):
                    m.next = "IDLE"

        learning_phase = ~fsm.ongoing("IDLE") & ~fsm.ongoing("CLEAR")
        m.d.comb += [
            L["learn_busy"].eq(~fsm.ongoing("IDLE") | post_running),
            L["learn_hold"].eq(learning_phase | (self.step & enabled)),
        ]

        # read ports: the scans (holding while a row or column issues), the weight pipeline,
        # the post-trace passes, or a request while idle
        m.d.comb += [
            pre_rd.addr.eq(axon_counter), pre_rd.en.eq(~in_row),
            plastic_rd.addr.eq(axon_counter), plastic_rd.en.eq(~in_row),
            event_rd[0].addr.eq(axon_counter), event_rd[0].en.eq(~in_row),
            event_rd[1].addr.eq(axon_counter), event_rd[1].en.eq(~in_row),
            post_rd.addr.eq(post_index),
            fired_rd.addr.eq(post_index), fired_rd.en.eq(~in_column),
        ]
        with m.If(rmw_issue):       # integration of the swept bank is over by then
            m.d.comb += weight_rd.addr.eq(rmw_addr)
        m.d.sync += [
            Assert(~(rmw_issue & (L["iss_active"] | mem_access)), "learning: weight memory in use"),
            Assert(~(learning_phase & accept), "learning: an event accepted during the learning phase"),
        ]

        # --- memory requests ------------------------------------------------------------------
        req_post = Signal(range(A + N))
        m.d.comb += req_post.eq(req_addr - A)
        req_post_word = req_post >> lane_bits
        req_post_lane = req_post[:lane_bits] if lane_bits else Const(0, 1)
        req_is_pre = req_addr < A
        reseed = Signal()
        m.d.sync += reseed.eq(0)            # set by a SEED write below
        with m.If(mem_access):
            m.d.comb += [pre_rd.addr.eq(req_addr), plastic_rd.addr.eq(req_addr), post_rd.addr.eq(req_post_word)]
            with m.If(write & req_hit[MemorySpace.TRACE]):
                with m.If(req_is_pre):
                    m.d.comb += [pre_wr.addr.eq(req_addr), pre_wr.data.eq(request.data[:T]), pre_wr.en.eq(1)]
                with m.Else():
                    m.d.comb += [post_wr.addr.eq(req_post_word),
                                 post_wr.data.eq(Cat(*[request.data[:T]] * P)),
                                 post_wr.en.eq(1 << req_post_lane)]
            m.d.comb += [plastic_wr.addr.eq(req_addr), plastic_wr.data.eq(request.data[0]),
                         plastic_wr.en.eq(write & req_hit[MemorySpace.PLASTIC])]
            with m.If(write & req_hit[MemorySpace.CORE] & (req_addr == CoreRegister.LEARNING.value)):
                m.d.sync += core_learning.eq(request.data[0])
            with m.If(write & req_hit[MemorySpace.STDP]):
                with m.Switch(req_addr[:4]):
                    for field, register in config.items():
                        with m.Case(field.value):
                            if field in factor:
                                value = Mux(request.data > DECAY_ONE, DECAY_ONE, request.data[:DECAY_BITS + 1])
                                m.d.sync += factor[field].eq(DECAY_ONE - value)
                            else:
                                value = request.data[:len(register)]
                            m.d.sync += register.eq(value)
                            if field is StdpField.SEED:
                                m.d.sync += reseed.eq(1)
                    # StdpField.REWARD is the chip's register (the `reward` port): not written here

        # a SEED write reseeds every lane's LFSR in the next cycle (from the seed register)
        with m.If(reseed):
            for lane in range(P):
                seeded = (config[StdpField.SEED] + 0x9E37 * (lane + 1))[:LFSR_BITS]
                m.d.sync += lfsr[lane].eq(Mux(seeded == 0, 1, seeded))

        raw_pre, raw_plastic = Signal(T), Signal()
        raw_post = Signal(post_layout)
        with m.If(mem_collect):
            m.d.sync += [raw_pre.eq(pre_rd.data), raw_plastic.eq(plastic_rd.data), raw_post.eq(post_rd.data)]
        with m.If(mem_format & ~request.write):
            with m.If(req_hit[MemorySpace.TRACE]):
                m.d.sync += resp_data.eq(Mux(req_is_pre, raw_pre,
                                             raw_post.as_value().word_select(req_post_lane, T) if P > 1
                                             else raw_post.as_value()))
            with m.If(req_hit[MemorySpace.PLASTIC]):
                m.d.sync += resp_data.eq(raw_plastic)
            with m.If(req_hit[MemorySpace.CORE] & (req_addr == CoreRegister.LEARNING.value)):
                m.d.sync += resp_data.eq(core_learning)
            with m.If(req_hit[MemorySpace.STDP]):
                with m.Switch(req_addr[:4]):
                    for field, register in config.items():
                        with m.Case(field.value):
                            m.d.sync += resp_data.eq(register)      # sign-extends w_min, w_max
                    with m.Case(StdpField.REWARD.value):
                        m.d.sync += resp_data.eq(self.reward)
