"""The on-chip input encoder: intensities loaded once, input spikes generated every step.

:class:`InputEncoder` holds ``shape.encoder_channels`` channels. Each has a rate, a phase
accumulator and a target (core, axon); the chip-wide registers are the enable bit, the mode
(:class:`~neurofabric.hdl.protocol.EncoderMode`) and the 16-bit seed of a 32-bit Galois LFSR
(taps :data:`~neurofabric.hdl.protocol.ENCODER_LFSR_TAPS`). What one step computes is
``neurofabric.host.model.encoder_spikes`` (docs/semantics.md, "Input encoder"):

- PHASE: ``total = phase + rate``; the channel spikes when ``total >= 2**16``; ``phase`` becomes
  ``total mod 2**16``.
- BERNOULLI: the LFSR steps :data:`~neurofabric.hdl.protocol.ENCODER_LFSR_STEPS` (16) times per
  channel, in channel order, whatever the channel's rate (the 16 steps are one XOR network, so a
  channel still takes one cycle); the channel spikes when the top 16 bits of the new LFSR state
  are ``< rate`` (probability ``rate / 2**16``).
  Phases are left alone.

A spike is an AXON event ``(core, axon)`` on ``events``, which the chip delivers to the core for
the step that is starting (docs/semantics.md: after the routed spikes, before host inputs).
"""

from types import SimpleNamespace

from amaranth.hdl import Assert, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.core_memory import MemorySignature
from neurofabric.hdl.pipeline import SkidBuffer
from neurofabric.hdl.protocol import (
    ENCODER_DRAW_BITS,
    ENCODER_LFSR_BITS,
    ENCODER_LFSR_STEPS,
    ENCODER_LFSR_TAPS,
    ENCODER_PHASE_BITS,
    ENCODER_RATE_BITS,
    ENCODER_RATE_ONE,
    LFSR_BITS,
    ChipRegister,
    EncoderMode,
    EncoderTarget,
    MemorySpace,
)
from neurofabric.hdl.router import MEM_OK, MEM_REFUSED

__all__ = ["InputEncoder", "lfsr_ahead"]


def lfsr_ahead(state, steps=ENCODER_LFSR_STEPS, bits=ENCODER_LFSR_BITS, taps=ENCODER_LFSR_TAPS):
    """The Galois LFSR state `steps` (<= `bits`) steps after `state` (a `bits`-bit value), where
    one step is ``(s >> 1) ^ (taps if s & 1 else 0)``.

    The map is linear over GF(2), and a state bit at or above `steps` only shifts down in
    `steps` steps (it reaches bit 0 no earlier than the last one), so the result is
    ``(state >> steps)`` XOR, for each of the `steps` low bits that is set, that bit's own
    image (a constant): `steps` word-wide XORs, which simulate much faster than a network of
    single-bit XORs and synthesise to the same logic."""
    if not 1 <= steps <= bits:
        raise ValueError(f"steps = {steps} is out of range: allowed [1, {bits}]")

    def image(value):
        for _ in range(steps):
            value = (value >> 1) ^ (taps if value & 1 else 0)
        return value

    result = state >> steps
    for i in range(steps):
        result = result ^ Mux(state[i], Const(image(1 << i), bits), Const(0, bits))
    return result[:bits]


class InputEncoder(CheckedComponent):
    """`shape.encoder_channels` input encoder channels of a chip of `shape`.

    Ports:

    - ``start`` (in, 1-cycle pulse): sweep every channel once, if the encoder is enabled;
      ignored while a sweep is running.
    - ``busy`` (out): a sweep is running or one of its events has not been taken yet.
    - ``events`` (out stream of :class:`EncoderTarget`): the spikes of the sweep, in channel
      order, through a register slice.
    - ``mem``/``mem_resp``: ``MemorySpace.ENCODER`` (addr = ``EncoderField * channels + channel``)
      and the registers ``MemorySpace.CHIP`` ``ChipRegister.ENCODER`` / ``ENCODER_SEED`` /
      ``ENCODER_STEPS`` (other requests are refused). A write answers :data:`MEM_OK`, or
      :data:`MEM_REFUSED` without writing when the address or a field is out of range (rate >
      2**16, phase >= 2**16, a target core or axon that does not exist, non-zero upper bits, a
      register word out of range); a read answers the word (0 out of range). A sweep that
      starts with ENCODER_STEPS non-zero counts it down; the sweep that brings it to 0 clears
      the enable bit. Requests are taken only between sweeps; the chip
      makes sure no sweep starts while one is in flight (it holds the step controller).

    Cycle behaviour: a sweep reads one channel per cycle from block RAM and judges it the next
    cycle, so it takes ``channels + 2`` cycles when ``events`` never stalls; a stalled spike
    holds the sweep until it is taken. Memory requests answer 1 (write) or 2 (read) cycles
    after they are accepted.
    """

    @classmethod
    def check_parameters(cls, shape):
        channels = getattr(shape, "encoder_channels", 0)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"encoder_channels = {channels!r} is out of range: an InputEncoder needs "
                             "at least 1 channel")

    def __init__(self, shape):
        self.shape = shape
        self.channels = shape.encoder_channels
        self._slice = SkidBuffer(EncoderTarget)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "events": Out(stream.Signature(EncoderTarget)),
            **MemorySignature().members,
        })

    def elaborate(self, platform):
        m = Module()
        channels = self.channels

        m.submodules.rate_mem = rate_mem = Memory(shape=ENCODER_RATE_BITS, depth=channels, init=[])
        m.submodules.phase_mem = phase_mem = Memory(shape=ENCODER_PHASE_BITS, depth=channels, init=[])
        m.submodules.target_mem = target_mem = Memory(shape=EncoderTarget, depth=channels, init=[])
        rate_wr, phase_wr, target_wr = rate_mem.write_port(), phase_mem.write_port(), target_mem.write_port()
        rate_rd = rate_mem.read_port(transparent_for=())
        phase_rd = phase_mem.read_port(transparent_for=())
        target_rd = target_mem.read_port(transparent_for=())
        ports = SimpleNamespace(rate_rd=rate_rd, phase_rd=phase_rd, target_rd=target_rd,
                                rate_wr=rate_wr, phase_wr=phase_wr, target_wr=target_wr)

        m.submodules.slice = out_slice = self._slice
        wiring.connect(m, out_slice.o_stream, wiring.flipped(self.events))

        # --- chip-wide registers ------------------------------------------------------------------
        enabled = Signal()
        mode = Signal(EncoderMode)
        seed = Signal(LFSR_BITS, init=1)
        steps_left = Signal(16)
        lfsr = Signal(ENCODER_LFSR_BITS, init=1)
        lfsr_step = Signal(ENCODER_LFSR_BITS)
        m.d.comb += lfsr_step.eq(lfsr_ahead(lfsr))
        registers = SimpleNamespace(enabled=enabled, mode=mode, seed=seed, steps_left=steps_left, lfsr=lfsr)

        sweep = self._sweep(m, ports, registers, lfsr_step, out_slice)
        self._host_access(m, ports, registers, sweep)
        return m

    def _sweep(self, m, ports, registers, lfsr_step, out_slice):
        """The sweep: read channel `next_channel`; judge channel `channel` one cycle later and
        offer its event to `out_slice`. Its state, in a namespace."""
        channels = self.channels
        rate_rd, phase_rd, target_rd = ports.rate_rd, ports.phase_rd, ports.target_rd
        enabled, mode, steps_left, lfsr = registers.enabled, registers.mode, registers.steps_left, registers.lfsr
        sweeping = Signal()
        next_channel = Signal(range(channels + 1))
        have = Signal()                 # the read ports hold channel `channel`
        channel = Signal(range(channels))
        issuing = sweeping & (next_channel != channels)

        total = Signal(ENCODER_RATE_BITS)
        m.d.comb += total.eq(phase_rd.data + rate_rd.data)
        spike = Signal()
        with m.If(mode == EncoderMode.PHASE):
            m.d.comb += spike.eq(total[ENCODER_PHASE_BITS])
        with m.Else():
            m.d.comb += spike.eq(lfsr_step[ENCODER_LFSR_BITS - ENCODER_DRAW_BITS:] < rate_rd.data)
        m.d.comb += [
            out_slice.i_stream.payload.eq(target_rd.data),
            out_slice.i_stream.valid.eq(have & spike),
        ]
        # the judged channel is done (its event, if any, taken): the ports may read the next one
        advance = ~have | ~spike | out_slice.i_stream.ready
        done = have & advance

        sweep_read = Signal()
        m.d.comb += sweep_read.eq(sweeping & advance)
        with m.If(sweeping & advance):
            m.d.sync += [have.eq(issuing), channel.eq(next_channel)]
            with m.If(issuing):
                m.d.sync += next_channel.eq(next_channel + 1)
            with m.Elif(~have):
                m.d.sync += sweeping.eq(0)
        with m.If(done & (mode == EncoderMode.BERNOULLI)):
            m.d.sync += lfsr.eq(lfsr_step)
        with m.If(self.start & ~sweeping & enabled):
            m.d.sync += [sweeping.eq(1), next_channel.eq(0), have.eq(0)]
            with m.If(steps_left != 0):
                m.d.sync += steps_left.eq(steps_left - 1)
                with m.If(steps_left == 1):
                    m.d.sync += enabled.eq(0)
        m.d.comb += self.busy.eq(sweeping | out_slice.o_stream.valid)

        return SimpleNamespace(sweeping=sweeping, next_channel=next_channel, channel=channel,
                               sweep_read=sweep_read, total=total, done=done)

    def _host_access(self, m, ports, registers, sweep):
        """``MemorySpace.ENCODER`` and the chip registers ENCODER, ENCODER_SEED and ENCODER_STEPS:
        writes are checked and land in the cycle they are accepted, reads answer a cycle later."""
        shape, channels = self.shape, self.channels
        rate_rd, phase_rd, target_rd = ports.rate_rd, ports.phase_rd, ports.target_rd
        rate_wr, phase_wr, target_wr = ports.rate_wr, ports.phase_wr, ports.target_wr
        read_ports = (rate_rd, phase_rd, target_rd)
        enabled, mode, seed = registers.enabled, registers.mode, registers.seed
        steps_left, lfsr = registers.steps_left, registers.lfsr
        sweeping, next_channel, channel = sweep.sweeping, sweep.next_channel, sweep.channel
        sweep_read, total, done = sweep.sweep_read, sweep.total, sweep.done
        request = self.mem.payload
        resp_valid = Signal()
        resp_data = Signal(32)
        read_pending = Signal()
        read_field = Signal(3)          # 0..2: EncoderField, 3..5: ENCODER, _SEED, _STEPS; 7: none
        accept = self.mem.valid & self.mem.ready
        m.d.comb += [
            self.mem.ready.eq(~resp_valid & ~read_pending & ~sweeping & ~self.start),
            self.mem_resp.valid.eq(resp_valid),
            self.mem_resp.payload.eq(resp_data),
        ]
        addr = request.addr
        is_space = request.mem == MemorySpace.ENCODER
        in_rate = is_space & (addr < channels)
        in_phase = is_space & (addr >= channels) & (addr < 2 * channels)
        in_target = is_space & (addr >= 2 * channels) & (addr < 3 * channels)
        host_channel = Signal(range(channels))
        m.d.comb += host_channel.eq(Mux(in_rate, addr, Mux(in_phase, addr - channels, addr - 2 * channels)))
        is_chip = request.mem == MemorySpace.CHIP
        is_enable = is_chip & (addr == ChipRegister.ENCODER)
        is_seed = is_chip & (addr == ChipRegister.ENCODER_SEED)
        is_steps = is_chip & (addr == ChipRegister.ENCODER_STEPS)
        new_target = EncoderTarget(request.data[:EncoderTarget.as_shape().size])
        data_ok = Signal()
        with m.If(in_rate):
            m.d.comb += data_ok.eq(request.data <= ENCODER_RATE_ONE)
        with m.Elif(in_phase):
            m.d.comb += data_ok.eq(request.data < ENCODER_RATE_ONE)
        with m.Elif(in_target):
            m.d.comb += data_ok.eq((request.data[EncoderTarget.as_shape().size:] == 0)
                                   & (new_target.core < shape.cores) & (new_target.axon < shape.axons))
        with m.Elif(is_enable):
            m.d.comb += data_ok.eq(request.data < 4)
        with m.Elif(is_seed):
            m.d.comb += data_ok.eq(request.data < (1 << LFSR_BITS))
        with m.Elif(is_steps):
            m.d.comb += data_ok.eq(request.data < (1 << 16))
        host_write = accept & request.write & data_ok

        for port in read_ports:
            m.d.comb += [
                port.addr.eq(Mux(sweeping, next_channel, host_channel)),
                port.en.eq(Mux(sweeping, sweep_read, 1)),
            ]
        m.d.comb += [
            rate_wr.addr.eq(host_channel),
            rate_wr.data.eq(request.data),
            rate_wr.en.eq(host_write & in_rate),
            target_wr.addr.eq(host_channel),
            target_wr.data.eq(new_target),
            target_wr.en.eq(host_write & in_target),
        ]
        with m.If(sweeping):
            m.d.comb += [
                phase_wr.addr.eq(channel),
                phase_wr.data.eq(total[:ENCODER_PHASE_BITS]),
                phase_wr.en.eq(done & (mode == EncoderMode.PHASE)),
            ]
        with m.Else():
            m.d.comb += [
                phase_wr.addr.eq(host_channel),
                phase_wr.data.eq(request.data),
                phase_wr.en.eq(host_write & in_phase),
            ]
        with m.If(host_write & is_enable):
            m.d.sync += [enabled.eq(request.data[0]), mode.eq(request.data[1])]
        with m.If(host_write & is_seed):
            seed_word = request.data[:LFSR_BITS]
            m.d.sync += [seed.eq(seed_word), lfsr.eq(Mux(seed_word == 0, 1, seed_word))]
        with m.If(host_write & is_steps):
            m.d.sync += steps_left.eq(request.data[:16])

        with m.If(accept):
            with m.If(request.write):
                m.d.sync += [resp_valid.eq(1), resp_data.eq(Mux(data_ok, MEM_OK, MEM_REFUSED))]
            with m.Else():
                m.d.sync += [
                    read_pending.eq(1),
                    read_field.eq(Mux(in_rate, 0, Mux(in_phase, 1, Mux(in_target, 2, Mux(
                        is_enable, 3, Mux(is_seed, 4, Mux(is_steps, 5, 7))))))),
                ]
        with m.If(read_pending):
            with m.Switch(read_field):
                with m.Case(0):
                    m.d.sync += resp_data.eq(rate_rd.data)
                with m.Case(1):
                    m.d.sync += resp_data.eq(phase_rd.data)
                with m.Case(2):
                    m.d.sync += resp_data.eq(target_rd.data.as_value())
                with m.Case(3):
                    m.d.sync += resp_data.eq(enabled | (mode.as_value() << 1))
                with m.Case(4):
                    m.d.sync += resp_data.eq(seed)
                with m.Case(5):
                    m.d.sync += resp_data.eq(steps_left)
                with m.Default():
                    m.d.sync += resp_data.eq(0)
            m.d.sync += [read_pending.eq(0), resp_valid.eq(1)]
        with m.If(self.mem_resp.valid & self.mem_resp.ready):
            m.d.sync += resp_valid.eq(0)
        # the chip starts no sweep while a memory request is in flight (it holds the controller)
        m.d.comb += Assert(~(self.start & enabled & (read_pending | resp_valid)))
