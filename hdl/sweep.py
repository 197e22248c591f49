"""The neuron core's update sweep: the pipelined CUBA-LIF update of every neuron at a step.

:class:`UpdateSweep` holds the per-neuron words (state and parameters) and the spike FIFO and
updates one neuron per cycle through a 7-stage pipeline (S0, the issue stage, to S6), reading the neuron's accumulator from
the integrator (:class:`~neurofabric.hdl.integrator.AccumulatorPort`) and its profile from
:class:`NeuronProfiles`. docs/core.md describes the stages; docs/semantics.md the arithmetic.
"""

from amaranth import Assert, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from neurofabric.hdl.core_memory import CoreBus, CoreDecoder, core_shape, pipeline_register
from neurofabric.hdl.integrator import AccumulatorPort, accumulator_layout, saturate
from neurofabric.hdl.protocol import (
    ACC_BITS,
    DECAY_BITS,
    DECAY_ONE,
    PROFILE_BITS,
    PROFILE_COUNT,
    REFRACTORY_BITS,
    STATE_BITS,
    CoreRegister,
    MemorySpace,
    ProfileField,
    StateField,
    signed_range,
)

__all__ = ["NeuronProfiles", "SpikeRecord", "UpdateSweep", "DEFAULT_THRESHOLD", "SPIKE_FIFO_DEPTH",
           "WEIGHT_EXP_BITS"]

WEIGHT_EXP_BITS = 4
#: Depth of the spike FIFO in front of `spike_out` (>= sweep pipeline depth + 2).
SPIKE_FIFO_DEPTH = 16
#: A profile's fields after reset: those of the model's default `NeuronProfile` (no decay,
#: threshold 1024, v_reset 0, reset to value, no refractory period, no adaptation).
DEFAULT_THRESHOLD = 1 << 10
FACTOR_BITS = DECAY_BITS + 1

# the per-neuron words, in two memories written per byte: `state_mem` holds what the sweep
# needs first (read at S0, out at S1): u, v, theta and the profile index; `neuron_mem` what it
# needs later (read at S2, registered at S4, so no pipeline register carries them): the bias
# and the refractory counter. The sweep writes both back at S6.
STATE_FIELDS = {"u": (0, signed(STATE_BITS)), "v": (STATE_BITS, signed(STATE_BITS)),
                "theta": (2 * STATE_BITS, signed(STATE_BITS)),
                "profile": (3 * STATE_BITS, unsigned(PROFILE_BITS))}
NEURON_FIELDS = {"bias": (0, signed(STATE_BITS)), "refractory": (STATE_BITS, unsigned(REFRACTORY_BITS))}


def _fields_of(word, fields):
    return {name: word[offset:offset + shape.width].as_signed() if shape.signed
            else word[offset:offset + shape.width]
            for name, (offset, shape) in fields.items()}


def _field_bytes(fields, name):
    """The write-enable bits of field `name` of a word of `fields`."""
    offset, shape = fields[name]
    return ((1 << ((shape.width + 7) // 8)) - 1) << (offset // 8)


class SpikeRecord(wiring.Signature):
    """The neuron leaving the sweep pipeline (members from the sweep's side): ``valid`` for one
    cycle, its index ``neuron`` and whether it ``fired``."""

    def __init__(self, neurons):
        self.neurons = neurons
        super().__init__({"valid": Out(1), "neuron": Out(range(neurons)), "fired": Out(1)})

    def __eq__(self, other):
        return type(other) is type(self) and other.neurons == self.neurons

    def __hash__(self):
        return hash((type(self), self.neurons))


class NeuronProfiles(wiring.Component):
    """The `PROFILE_COUNT` neuron profiles (``MemorySpace.PROFILE``), read by the sweep.

    One memory per group of fields read at the same sweep stage, 8 entries each (LUT RAM on
    ECP5, EBR on iCE40; 120 bits: 8 iCE40 block RAMs, 16 bits wide each). Decays are stored as
    factors 4096 - d, with the reset mode (read with them and carried to the reset stage):
    du [0:13], dv [13:26], dtheta [26:39], reset_mode [39]; threshold and theta_plus; v_reset
    [0:24] and the refractory period [24:32]. Each group's outputs are valid the cycle after its
    ``*_addr`` input; in a request's access cycle the request addresses all three.
    """

    def __init__(self, shape):
        self.shape = shape      #: the core's ChipShape (for the memory map)
        super().__init__({
            "bus": In(CoreBus()), "read_data": Out(32),
            "decay_addr": In(PROFILE_BITS), "threshold_addr": In(PROFILE_BITS), "reset_addr": In(PROFILE_BITS),
            "decay_factors": Out(data.ArrayLayout(FACTOR_BITS, 3)),    # u, v, theta
            "reset_mode": Out(1),
            "threshold": Out(signed(STATE_BITS)), "theta_plus": Out(signed(STATE_BITS)),
            "v_reset": Out(signed(STATE_BITS)), "refractory": Out(REFRACTORY_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        bus, request = self.bus, self.bus.request
        decoder = CoreDecoder(request, self.shape)
        m.submodules.profile_decay_mem = decay_mem = Memory(
            shape=unsigned(3 * FACTOR_BITS + 1), depth=PROFILE_COUNT,
            init=[DECAY_ONE * (1 + (1 << FACTOR_BITS) + (1 << 2 * FACTOR_BITS))] * PROFILE_COUNT)
        m.submodules.profile_threshold_mem = threshold_mem = Memory(
            shape=data.ArrayLayout(signed(STATE_BITS), 2), depth=PROFILE_COUNT,
            init=[[DEFAULT_THRESHOLD, 0]] * PROFILE_COUNT)   # threshold, theta_plus
        m.submodules.profile_reset_mem = reset_mem = Memory(
            shape=unsigned(STATE_BITS + REFRACTORY_BITS), depth=PROFILE_COUNT, init=[])
        decay_rd = decay_mem.read_port(transparent_for=())
        decay_wr = decay_mem.write_port(granularity=1)      # one bit per enable bit
        threshold_rd = threshold_mem.read_port(transparent_for=())
        threshold_wr = threshold_mem.write_port(granularity=1)
        reset_rd = reset_mem.read_port(transparent_for=())
        reset_wr = reset_mem.write_port(granularity=8)
        m.d.comb += [
            self.decay_factors.eq(decay_rd.data[:3 * FACTOR_BITS]),
            self.reset_mode.eq(decay_rd.data[3 * FACTOR_BITS]),
            self.threshold.eq(threshold_rd.data[0]), self.theta_plus.eq(threshold_rd.data[1]),
            self.v_reset.eq(reset_rd.data[:STATE_BITS].as_signed()),
            self.refractory.eq(reset_rd.data[STATE_BITS:]),
        ]

        req_profile, req_field = decoder.record(MemorySpace.PROFILE)

        def case(*fields):
            return m.Case(*(decoder.address(MemorySpace.PROFILE, field) for field in fields))
        for port, addr in ((decay_rd, self.decay_addr), (threshold_rd, self.threshold_addr),
                           (reset_rd, self.reset_addr)):
            m.d.comb += port.addr.eq(Mux(bus.access, req_profile, addr))

        decay_value = Mux(request.data > DECAY_ONE, DECAY_ONE, request.data[:DECAY_BITS + 1])
        m.d.comb += [
            decay_wr.addr.eq(req_profile),
            decay_wr.data.eq(Cat(*[(DECAY_ONE - decay_value)[:FACTOR_BITS]] * 3, request.data[0])),
            threshold_wr.addr.eq(req_profile),
            threshold_wr.data.eq(Cat(*[request.data[:STATE_BITS]] * 2)),
            reset_wr.addr.eq(req_profile),
            reset_wr.data.eq(Cat(request.data[:STATE_BITS], request.data[:REFRACTORY_BITS])),
        ]
        hit = decoder.hit(MemorySpace.PROFILE)
        field_bits = (1 << FACTOR_BITS) - 1
        with m.If(bus.access & request.write & hit):
            with m.Switch(req_field):
                for field, port, enable in (
                        (ProfileField.DU, decay_wr, field_bits),
                        (ProfileField.DV, decay_wr, field_bits << FACTOR_BITS),
                        (ProfileField.DTHETA, decay_wr, field_bits << 2 * FACTOR_BITS),
                        (ProfileField.RESET_MODE, decay_wr, 1 << 3 * FACTOR_BITS),
                        (ProfileField.THRESHOLD, threshold_wr, 0b01),
                        (ProfileField.THETA_PLUS, threshold_wr, 0b10),
                        (ProfileField.V_RESET, reset_wr, 0b0111),
                        (ProfileField.REFRACTORY, reset_wr, 0b1000)):
                    with case(field):
                        m.d.comb += port.en.eq(enable)

        # collect: a decay is 4096 - its stored factor (one subtractor for the three)
        profile_read = Signal(32)
        with m.If(bus.collect):
            factor_read = Signal(FACTOR_BITS)
            with m.Switch(req_field):
                for k, field in enumerate((ProfileField.DU, ProfileField.DV, ProfileField.DTHETA)):
                    with case(field):
                        m.d.comb += factor_read.eq(self.decay_factors[k])
            with m.Switch(req_field):
                for field, value in (
                        ((ProfileField.DU, ProfileField.DV, ProfileField.DTHETA), DECAY_ONE - factor_read),
                        ((ProfileField.THRESHOLD,), self.threshold),
                        ((ProfileField.THETA_PLUS,), self.theta_plus),
                        ((ProfileField.V_RESET,), self.v_reset),
                        ((ProfileField.RESET_MODE,), self.reset_mode),
                        ((ProfileField.REFRACTORY,), self.refractory)):
                    with case(*field):
                        m.d.sync += profile_read.eq(value)     # sign-extends signed fields
        with m.If(hit & ~request.write):
            m.d.comb += self.read_data.eq(profile_read)
        return m


class SpikeQueue(wiring.Component):
    """The spike FIFO in front of ``spike_out`` (`depth` entries), with credits: ``credit`` is
    high while an entry is free that no neuron in the sweep pipeline has claimed. A neuron
    claims one as it is issued (``claim``) and gives it back as it leaves the pipeline without
    a spike (``record``); a spike's entry comes back when ``spike_out`` takes it. ``idle``: no
    entry claimed or holding a spike."""

    def __init__(self, neurons, depth):
        self.neurons, self.depth = neurons, depth
        super().__init__({
            "claim": In(1), "record": In(SpikeRecord(neurons)),
            "spike_out": Out(stream.Signature(range(neurons))),
            "credit": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.spike_fifo = spike_fifo = fifo.SyncFIFOBuffered(
            width=max(1, ceil_log2(self.neurons)), depth=self.depth)
        m.d.comb += [
            self.spike_out.valid.eq(spike_fifo.r_rdy),
            self.spike_out.payload.eq(spike_fifo.r_data),
            spike_fifo.r_en.eq(self.spike_out.ready),
            spike_fifo.w_en.eq(self.record.valid & self.record.fired),
            spike_fifo.w_data.eq(self.record.neuron),
        ]
        with m.If(spike_fifo.w_en):
            m.d.sync += Assert(spike_fifo.w_rdy, "spike FIFO overflow")
        credits = Signal(range(self.depth), init=self.depth - 1)
        credit_return = Signal(2)
        m.d.comb += [
            credit_return.eq((self.record.valid & ~self.record.fired)
                             + (self.spike_out.valid & self.spike_out.ready)),
            self.credit.eq(credits != 0),
            self.idle.eq(credits == self.depth - 1),
        ]
        m.d.sync += credits.eq(credits - self.claim + credit_return)
        return m


class UpdateSweep(wiring.Component):
    """Updates every neuron once per `step`, as the model's ``_update`` does.

    Ports: ``step`` (the core's), ``bus``/``read_data`` (``MemorySpace.NEURON``, ``STATE``,
    ``PROFILE`` and the ``WEIGHT_EXP`` register), ``accumulators`` (to the integrator),
    ``spike_out`` (the core's), ``busy`` (a sweep is pending or running, or spikes are
    undelivered), ``done`` (no sweep pending, issuing or in the pipeline) and, with `learning`,
    ``record`` (:class:`SpikeRecord`, every neuron as it leaves the pipeline).

    Cycle behaviour: after `step` the sweep waits until no operation on the swept bank is left
    in the integrator and no request is in its access cycle, then issues one neuron per cycle
    into the pipeline (S0 .. S6) while it holds a credit (a free spike FIFO entry not yet claimed
    by a neuron in the pipeline): ``neurons + 10`` cycles from `step` to idle when `spike_out`
    keeps up. The spike FIFO holds `spike_depth` entries.
    """

    def __init__(self, neurons, axons, lanes, *, learning):
        self.neurons, self.lanes, self.learning = neurons, lanes, learning
        self.shape = core_shape(neurons, axons, lanes)      #: for the memory map
        self.words = neurons // lanes
        # with learning, the FIFO holds a whole sweep's spikes: the sweep (and the learning phase
        # after it, during which axon_in is held off) never waits on spike_out
        self.spike_depth = max(SPIKE_FIFO_DEPTH, neurons + 1) if learning else SPIKE_FIFO_DEPTH
        members = {
            "step": In(1),
            "bus": In(CoreBus()), "read_data": Out(32),
            "accumulators": Out(AccumulatorPort(self.words, lanes)),
            "spike_out": Out(stream.Signature(range(neurons))),
            "busy": Out(1), "done": Out(1),
        }
        if learning:
            members["record"] = Out(SpikeRecord(neurons))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        N, P = self.neurons, self.lanes
        lane_bits = exact_log2(P)
        bus, request, acc = self.bus, self.bus.request, self.accumulators

        m.submodules.state_mem = state_mem = Memory(shape=unsigned(3 * STATE_BITS + 8), depth=N, init=[])
        state_rd = state_mem.read_port(transparent_for=())
        state_wr = state_mem.write_port(granularity=8)
        m.submodules.neuron_mem = neuron_mem = Memory(shape=unsigned(STATE_BITS + 8), depth=N, init=[])
        neuron_rd = neuron_mem.read_port(transparent_for=())
        neuron_wr = neuron_mem.write_port(granularity=8)
        m.submodules.profiles = profiles = NeuronProfiles(self.shape)
        wiring.connect(m, wiring.flipped(self.bus), profiles.bus)
        state_read = _fields_of(state_rd.data, STATE_FIELDS)
        neuron_read = _fields_of(neuron_rd.data, NEURON_FIELDS)
        m.submodules.spikes = spikes = SpikeQueue(N, self.spike_depth)
        wiring.connect(m, spikes.spike_out, wiring.flipped(self.spike_out))

        in_pipeline = Signal()
        sweep_pending, sweep_issue, sweep_neuron = self._issue(m, spikes, in_pipeline)

        def stage(name, value, shape=None):
            return pipeline_register(m, f"sweep_{name}", value, shape)

        def counter(name, valid):
            return self._neuron_counter(m, f"sweep_{name}", valid, sweep_pending)

        # a request addresses both per-neuron memories (the sweep: state_mem at S0,
        # neuron_mem at S2)
        req_neuron = Signal(range(N))
        m.d.comb += [req_neuron.eq(Mux(request.mem == MemorySpace.STATE,
                                       CoreDecoder(request, self.shape).record(MemorySpace.STATE)[0], request.addr)),
                     state_rd.addr.eq(Mux(bus.access, req_neuron, sweep_neuron))]

        # S1: state_mem data out; its profile index addresses the decay factors
        valid1 = stage("valid1", sweep_issue)
        m.d.comb += profiles.decay_addr.eq(state_read["profile"])

        # S2: the decay factors and the reset mode out. The partial products of
        # decay(x) = (x * f + (x < 0 ? 4095 : 0)) >> 12, which rounds toward zero as the model
        # does: x = 4096 xh + xl, so decay(x) = xh f + ((xl f + r) >> 12) (xh: x >> 12, signed;
        # xl: x[11:0]; one DSP each). The accumulator word and neuron_mem are read.
        valid2 = stage("valid2", valid1)
        profile2 = stage("profile2", state_read["profile"])
        raw2 = {x: stage(f"{x}2", state_read[x]) for x in ("u", "v", "theta")}
        factor = {x: profiles.decay_factors[k] for k, x in enumerate(("u", "v", "theta"))}
        half = DECAY_BITS
        neuron2 = counter("neuron2", valid2)
        word2, lane2 = Signal(range(self.words)), Signal(range(P))
        m.d.comb += [word2.eq(neuron2 >> lane_bits), lane2.eq(neuron2[:lane_bits] if lane_bits else 0),
                     acc.read.eq(valid2), acc.word.eq(word2),
                     neuron_rd.addr.eq(Mux(bus.access, req_neuron, neuron2))]
        # the reset mode is read with the decay factors (S2) and carried to the reset (S6)
        reset_mode6 = profiles.reset_mode
        for k in range(3, 7):
            reset_mode6 = stage(f"reset_mode{k}", reset_mode6)

        # S3: the products out; the accumulator word out (the first neuron of a word latches it
        # and clears it in its bank); neuron_mem out; the threshold memory is addressed
        valid3 = stage("valid3", valid2)
        high3 = {x: stage(f"high_{x}3", raw2[x][half:].as_signed() * factor[x]) for x in raw2}
        low3 = {x: stage(f"low_{x}3", raw2[x][:half] * factor[x]) for x in raw2}
        negative3 = {x: stage(f"negative_{x}3", raw2[x] < 0) for x in raw2}
        lane3, word3, profile3 = stage("lane3", lane2), stage("word3", word2), stage("profile3", profile2)
        acc_word = Signal(accumulator_layout(P))
        first_of_word = valid3 & (lane3 == 0)
        with m.If(first_of_word):
            m.d.sync += acc_word.eq(acc.data)
        m.d.comb += [acc.clear.eq(first_of_word), acc.clear_word.eq(word3)]
        # the neuron's accumulator lane: lane 0 from the memory, the others from the latched word
        acc_lane3 = Mux(lane3 == 0, acc.data[0], acc_word[lane3]) if P > 1 else acc.data[0]
        m.d.comb += profiles.threshold_addr.eq(profile3)

        # S4: decay(x); the accumulator lane shifted by the weight exponent; the bias and the
        # refractory counter; the threshold and theta_plus out
        weight_exp = Signal(WEIGHT_EXP_BITS)
        valid4 = stage("valid4", valid3)
        decayed4 = {x: stage(f"decayed_{x}4",
                             high3[x] + (low3[x] >> half) + (negative3[x] & (low3[x][:half] != 0)),
                             signed(STATE_BITS + 2)) for x in raw2}
        shifted4 = stage("shifted4", acc_lane3 << weight_exp, signed(ACC_BITS + (1 << WEIGHT_EXP_BITS) - 1))
        bias4 = stage("bias4", neuron_read["bias"])
        refr4 = stage("refractory4", neuron_read["refractory"])
        profile4 = stage("profile4", profile3)

        # S5: u' = sat(decay(u) + (acc << exp)); decay(v) + bias; threshold + theta;
        #     theta + theta_plus (saturating); the reset memory is addressed
        valid5 = stage("valid5", valid4)
        u5 = stage("u5", saturate(decayed4["u"] + shifted4, STATE_BITS), signed(STATE_BITS))
        v_bias5 = stage("v_bias5", decayed4["v"] + bias4, signed(STATE_BITS + 3))
        effective5 = stage("effective5", profiles.threshold + decayed4["theta"], signed(STATE_BITS + 3))
        theta5 = stage("theta5", decayed4["theta"][:STATE_BITS].as_signed(), signed(STATE_BITS))
        theta_bumped5 = stage("theta_bumped5", saturate(decayed4["theta"] + profiles.theta_plus, STATE_BITS),
                              signed(STATE_BITS))
        refr5 = stage("refractory5", refr4)
        profile5 = stage("profile5", profile4)
        m.d.comb += profiles.reset_addr.eq(profile5)

        # S5 -> S6: v' = sat(decay(v) + u' + bias); the comparison against threshold + theta
        valid6 = stage("valid6", valid5)
        neuron6 = counter("neuron6", valid6)
        difference = self._threshold_difference(m, v_bias5, u5, effective5)
        active5 = refr5 == 0
        fired5 = Signal()
        m.d.comb += fired5.eq(active5 & (difference >= 0))
        fired6 = stage("fired6", fired5 & ~bus.access)
        active6 = stage("active6", active5)
        difference6 = stage("difference6", difference, signed(STATE_BITS + 4))
        # (a request's word in the access cycle: state_mem's write data in the collect cycle)
        request_word = request.data[:STATE_BITS].as_signed()
        neuron_word = CoreDecoder(request, self.shape).word(MemorySpace.NEURON)
        v_new6 = stage("v_new6", Mux(bus.access, request_word, saturate(v_bias5 + u5, STATE_BITS)),
                       signed(STATE_BITS))
        u6 = stage("u6", Mux(bus.access, request_word, u5))
        theta_final6 = stage("theta_final6", Mux(bus.access, request_word, Mux(fired5, theta_bumped5, theta5)))
        refr6 = stage("refractory6", refr5)

        # S6: write back the state (v only if not refractory); a spike goes into the FIFO
        v_final = Mux(fired6, Mux(reset_mode6, saturate(difference6, STATE_BITS), profiles.v_reset), v_new6)
        refr_final = Mux(fired6, profiles.refractory, Mux(active6, 0, refr6 - 1))
        # (the profile index and the bias are written by requests only)
        m.d.comb += [
            state_wr.data.eq(Cat(u6, v_final, theta_final6, neuron_word.profile)),
            neuron_wr.data.eq(Cat(neuron_word.bias,
                                  Mux(valid6, refr_final, request.data[:REFRACTORY_BITS]))),
        ]
        with m.If(valid6):
            m.d.comb += [state_wr.addr.eq(neuron6), neuron_wr.addr.eq(neuron6),
                         state_wr.en.eq(_field_bytes(STATE_FIELDS, "u") | _field_bytes(STATE_FIELDS, "theta")
                                        | Mux(active6, _field_bytes(STATE_FIELDS, "v"), 0)),
                         neuron_wr.en.eq(_field_bytes(NEURON_FIELDS, "refractory"))]
        with m.Else():
            self._request_writes(m, state_wr, neuron_wr, req_neuron)
        m.d.sync += Assert(~(valid6 & (bus.access | bus.collect)), "state written by the sweep and a request at once")
        m.d.comb += [spikes.record.valid.eq(valid6), spikes.record.neuron.eq(neuron6),
                     spikes.record.fired.eq(fired6),
                     in_pipeline.eq(valid1 | valid2 | valid3 | valid4 | valid5 | valid6)]
        if self.learning:
            m.d.comb += [self.record.valid.eq(valid6), self.record.neuron.eq(neuron6),
                         self.record.fired.eq(fired6)]

        # the request path reads the memories through the pipeline's first registers
        self._request_reads(m, weight_exp, profiles, {
            "u": raw2["u"], "v": raw2["v"], "theta": raw2["theta"], "refractory": refr4,
            "bias": bias4, "profile": profile2})
        return m

    def _issue(self, m, spikes, in_pipeline):
        """The issue stage: after `step`, wait until the swept bank has settled (no operation on
        it left in the integrator, no request in its access cycle), then issue one neuron per
        cycle while a spike FIFO entry is free. (pending, issue, neuron)."""
        N, acc, bus = self.neurons, self.accumulators, self.bus
        sweep_pending = Signal()    # step pulsed; waiting for the old bank's writes to land
        sweep_issuing = Signal()
        sweep_neuron = Signal(range(N))
        sweep_issue = Signal()
        m.d.comb += [self.busy.eq(sweep_pending | sweep_issuing | ~spikes.idle),
                     self.done.eq(~sweep_pending & ~sweep_issuing & ~in_pipeline)]
        with m.If(self.step):
            m.d.sync += sweep_pending.eq(1)
        with m.If(sweep_pending & ~acc.in_flight & ~bus.access):
            m.d.sync += [sweep_pending.eq(0), sweep_issuing.eq(1), sweep_neuron.eq(0)]
        m.d.sync += Assert(~(self.step & (sweep_pending | sweep_issuing | in_pipeline)),
                           "step pulsed while a sweep is pending or running")
        m.d.comb += [sweep_issue.eq(sweep_issuing & spikes.credit), spikes.claim.eq(sweep_issue)]
        with m.If(sweep_issue):
            with m.If(sweep_neuron == N - 1):
                m.d.sync += sweep_issuing.eq(0)
            with m.Else():
                m.d.sync += sweep_neuron.eq(sweep_neuron + 1)
        return sweep_pending, sweep_issue, sweep_neuron

    def _neuron_counter(self, m, name, valid, restart):
        """The index of the neuron at the stage whose valid bit is `valid`: neurons pass every
        stage in order, one per valid cycle, so no pipeline register carries it."""
        index = Signal(range(self.neurons), name=name)
        with m.If(restart):
            m.d.sync += index.eq(0)
        with m.Elif(valid):
            m.d.sync += index.eq(Mux(index == self.neurons - 1, 0, index + 1))
        return index

    @staticmethod
    def _threshold_difference(m, v_bias, u, effective):
        """d = v' - (threshold + theta) with v' = sat(v_bias + u), without waiting for the
        saturation of v': the unsaturated v_bias + u - effective in one carry chain (a
        carry-save layer folds the three operands), or bound - effective where v' saturates.
        d >= 0 is the comparison; sat(d) the subtract-reset value."""
        width = STATE_BITS + 5
        csa_a, csa_b, csa_c = (Signal(width, name=f"sweep_csa_{n}") for n in "abc")
        m.d.comb += [csa_a.eq(v_bias), csa_b.eq(u), csa_c.eq(~effective.as_signed())]
        unsaturated = Signal(signed(width))
        m.d.comb += unsaturated.eq((csa_a ^ csa_b ^ csa_c)
                                   + Cat(Const(1, 1), ((csa_a & csa_b) | (csa_a & csa_c) | (csa_b & csa_c))[:-1]))
        total = Signal(signed(STATE_BITS + 4))
        m.d.comb += total.eq(v_bias + u)
        top = total[STATE_BITS - 1:]
        lo, hi = signed_range(STATE_BITS)
        return Mux(top.all() | ~top.any(), unsaturated, Mux(total[-1], lo - effective, hi - effective))

    def _request_writes(self, m, state_wr, neuron_wr, req_neuron):
        """Request writes: neuron_mem in the access cycle; state_mem one cycle later (collect),
        from the sweep's last registers, which take the request's word in the access cycle (no
        write-data multiplexer in front of the memory)."""
        bus, request = self.bus, self.bus.request
        decoder = CoreDecoder(request, self.shape)
        access_write = bus.access & request.write
        collect_write = bus.collect & request.write
        neuron_hit = decoder.hit(MemorySpace.NEURON)
        state_hit = decoder.hit(MemorySpace.STATE)
        _, field = decoder.record(MemorySpace.STATE)
        m.d.comb += [state_wr.addr.eq(req_neuron), neuron_wr.addr.eq(req_neuron)]
        with m.If(access_write & neuron_hit):
            m.d.comb += neuron_wr.en.eq(_field_bytes(NEURON_FIELDS, "bias"))
        with m.If(collect_write & neuron_hit):
            m.d.comb += state_wr.en.eq(_field_bytes(STATE_FIELDS, "profile"))
        with m.If(access_write & state_hit
                  & (field == decoder.address(MemorySpace.STATE, StateField.REFRACTORY))):
            m.d.comb += neuron_wr.en.eq(_field_bytes(NEURON_FIELDS, "refractory"))
        with m.If(collect_write & state_hit):
            with m.Switch(field):
                for state_field, name in ((StateField.U, "u"), (StateField.V, "v"), (StateField.THETA, "theta")):
                    with m.Case(decoder.address(MemorySpace.STATE, state_field)):
                        m.d.comb += state_wr.en.eq(_field_bytes(STATE_FIELDS, name))

    def _request_reads(self, m, weight_exp, profiles, raw):
        """The WEIGHT_EXP register, and the response words of reads from the registers the
        pipeline loads from the memories in the collect cycle (`raw`)."""
        bus, request = self.bus, self.bus.request
        decoder = CoreDecoder(request, self.shape)
        weight_exp_hit = decoder.register_hit(MemorySpace.CORE, CoreRegister.WEIGHT_EXP)
        with m.If(bus.access & request.write & weight_exp_hit):
            m.d.sync += weight_exp.eq(request.data[:WEIGHT_EXP_BITS])
        m.d.comb += self.read_data.eq(profiles.read_data)     # 0 unless a PROFILE read
        with m.If(~request.write):
            with m.If(decoder.hit(MemorySpace.NEURON)):
                neuron_word = Signal(decoder.word(MemorySpace.NEURON).shape())
                m.d.comb += [neuron_word.bias.eq(raw["bias"]), neuron_word.profile.eq(raw["profile"]),
                             self.read_data.eq(neuron_word)]
            with m.If(decoder.hit(MemorySpace.STATE)):
                with m.Switch(decoder.record(MemorySpace.STATE)[1]):
                    for field, name in ((StateField.U, "u"), (StateField.V, "v"),
                                        (StateField.REFRACTORY, "refractory"), (StateField.THETA, "theta")):
                        with m.Case(decoder.address(MemorySpace.STATE, field)):
                            m.d.comb += self.read_data.eq(raw[name])  # sign-extends u, v, theta
            with m.If(weight_exp_hit):
                m.d.comb += self.read_data.eq(weight_exp)
