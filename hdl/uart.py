"""8N1 UART PHY: a receiver and a transmitter with a fixed clock divisor (clock / baud rate).

Both keep one byte in flight and speak ``amaranth.lib.stream`` bytes. The receiver has no
back-pressure on the wire: a byte not taken before the next one completes is dropped and
counted, as is a byte whose stop bit reads low (framing error); the host link's CRC then
rejects the frame it belonged to.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent

__all__ = ["UARTReceiver", "UARTTransmitter"]


class _DivisorComponent(CheckedComponent):
    """A UART half: `divisor` (clock frequency / baud rate) is checked before it exists."""

    @classmethod
    def check_parameters(cls, divisor):
        if isinstance(divisor, bool) or not isinstance(divisor, int) or not 4 <= divisor <= (1 << 24):
            raise ValueError(f"divisor = {divisor!r} is out of range: allowed integers in [4, 2**24] "
                             f"(clock frequency / baud rate)")


class UARTReceiver(_DivisorComponent):
    """Samples ``pin`` (through a two-flop synchroniser) in the middle of each bit.

    A falling edge starts a byte; the start bit is re-checked half a bit later (a glitch
    shorter than that is ignored), then 8 data bits LSB first and the stop bit are sampled one
    ``divisor`` apart. A good byte appears on ``data`` about 9.5 bit times after the start edge
    and stays valid until taken or until the next byte completes (then ``overrun``).
    ``errors`` counts dropped bytes (framing errors and overruns; wraps at 2**16);
    ``framing_error`` and ``overrun`` pulse for one cycle each time.
    """

    pin: In(1, init=1)
    data: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)
    errors: Out(16)

    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        pin = Signal(init=1)
        m.submodules.sync_pin = FFSynchronizer(self.pin, pin, init=1)
        timer = Signal(range(self.divisor))
        bit = Signal(range(10))
        shift = Signal(8)
        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        with m.If(self.framing_error | self.overrun):
            m.d.sync += self.errors.eq(self.errors + 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~pin):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(pin):
                        m.next = "IDLE"                     # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 8):                    # the stop bit
                        with m.If(~pin):
                            m.d.comb += self.framing_error.eq(1)
                            m.next = "BREAK"
                        with m.Else():
                            with m.If(self.data.valid & ~self.data.ready):
                                m.d.comb += self.overrun.eq(1)
                            with m.Else():
                                m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += shift.eq((shift >> 1) | (pin << 7))
            with m.State("BREAK"):                          # wait for the line to go idle
                with m.If(pin):
                    m.next = "IDLE"
        return m


class UARTTransmitter(_DivisorComponent):
    """Sends each byte taken from ``data`` as start bit, 8 data bits LSB first, stop bit, each
    ``divisor`` cycles long; back-to-back bytes leave no idle time (10 bit times per byte)."""

    data: In(stream.Signature(8))
    pin: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(10, init=0x3FF)
        left = Signal(range(11))
        m.d.comb += self.pin.eq(bits[0])
        with m.If(left == 0):
            m.d.comb += self.data.ready.eq(1)
            with m.If(self.data.valid):
                m.d.sync += [bits.eq((1 << 9) | (self.data.payload << 1)), left.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [bits.eq((bits >> 1) | (1 << 9)), left.eq(left - 1), timer.eq(self.divisor - 1)]
                with m.If(left == 1):
                    m.d.comb += self.data.ready.eq(1)
                    with m.If(self.data.valid):
                        m.d.sync += [bits.eq((1 << 9) | (self.data.payload << 1)), left.eq(10)]
        return m
