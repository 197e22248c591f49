"""The chip joined to its host link, with byte streams (or UART pins) at the top.

:class:`LinkedChip` is what the Verilator sim device wraps and what board tops instantiate
(through :class:`UartLinkedChip`, which adds the UART PHY of ``neurofabric.hdl.uart``).
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.link import HostLink, check_build_name
from neurofabric.hdl.protocol import LINK_FEATURE_LEARNING, Event
from neurofabric.hdl.uart import UARTReceiver, UARTTransmitter

__all__ = ["LinkedChip", "UartLinkedChip", "default_chip_factory"]


def default_chip_factory(shape, learning=False):
    """The real chip (``neurofabric.hdl.chip.Chip``), with learning cores if `learning`."""
    from neurofabric.hdl.chip import Chip
    return Chip(shape, learning=learning)


class LinkedChip(CheckedComponent):
    """`chip_factory(shape)` behind a :class:`~neurofabric.hdl.link.HostLink`.

    Ports: ``rx`` (host -> chip bytes), ``tx`` (chip -> host bytes), ``idle`` (the link waits for
    bytes and the chip is not running: nothing changes until a byte arrives, so a simulator may
    stop clocking), ``step`` (the chip's current step). ``input_queue`` is reported by IDENTIFY;
    by default it is the chip's ``input_queue_depth`` attribute if it has one, else 0. IDENTIFY
    also reports :data:`~neurofabric.hdl.link.LINK_FEATURE_LEARNING` when the chip's ``learning``
    attribute is true, the chip's ``encoder_channels`` attribute (0 if it has none: a stand-in
    chip has no encoder whatever the shape says), and `build_name` (printable ASCII, at most 16
    bytes: "sim", a board name).

    `output_fifo_depth` events (0: none) are buffered between the chip's output and the link, so
    the chip can run ahead of the host's READ_OUTPUT polls instead of stalling after its few
    output FIFO entries (one STEP marker per step fills them quickly). The sim device uses 4096
    (its steps no longer wait for round trips through the host); boards keep block RAM for the
    chip (0) since their UART bounds the output rate anyway.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    idle: Out(1)
    step: Out(32)

    @classmethod
    def check_parameters(cls, shape, *, chip_factory=default_chip_factory, input_queue=None,
                         rx_timeout=1_000_000, build_name="sim", output_fifo_depth=0):
        check_build_name(build_name)
        if isinstance(output_fifo_depth, bool) or not isinstance(output_fifo_depth, int) or \
                not 0 <= output_fifo_depth <= 1 << 16:
            raise ValueError(f"output_fifo_depth = {output_fifo_depth!r} is out of range: allowed [0, 65536]")

    def __init__(self, shape, *, chip_factory=default_chip_factory, input_queue=None, rx_timeout=1_000_000,
                 build_name="sim", output_fifo_depth=0):
        self.shape = shape
        self.output_fifo_depth = output_fifo_depth
        self.chip = chip_factory(shape)
        if input_queue is None:
            input_queue = getattr(self.chip, "input_queue_depth", 0)
        features = LINK_FEATURE_LEARNING if getattr(self.chip, "learning", False) is True else 0
        self.link = HostLink(shape, input_queue=input_queue, rx_timeout=rx_timeout, features=features,
                             build_name=build_name, encoder_channels=getattr(self.chip, "encoder_channels", 0))
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.chip = chip = self.chip
        m.submodules.link = link = self.link
        wiring.connect(m, link.mem, chip.mem)
        wiring.connect(m, chip.mem_resp, link.mem_resp)
        wiring.connect(m, link.inject, chip.inject)
        wiring.connect(m, link.run, chip.run)
        if self.output_fifo_depth:
            m.submodules.output_fifo = output_fifo = SyncFIFOBuffered(width=Event.as_shape().size,
                                                                       depth=self.output_fifo_depth)
            m.d.comb += [
                output_fifo.w_data.eq(chip.out.payload),
                output_fifo.w_en.eq(chip.out.valid),
                chip.out.ready.eq(output_fifo.w_rdy),
                link.out.payload.eq(output_fifo.r_data),
                link.out.valid.eq(output_fifo.r_rdy),
                output_fifo.r_en.eq(link.out.ready),
            ]
        else:
            wiring.connect(m, chip.out, link.out)
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        m.d.comb += [
            link.running.eq(chip.running),
            link.input_free.eq(chip.input_free),
            self.idle.eq(link.idle & ~chip.running),
            self.step.eq(chip.step),
        ]
        return m


class UartLinkedChip(CheckedComponent):
    """A :class:`LinkedChip` behind an 8N1 UART with clock divisor `divisor` (clock / baud).

    Ports: ``uart_rx`` (input pin, idle high), ``uart_tx`` (output pin), ``rx_errors`` (count of
    bytes dropped for a bad stop bit or an overrun). `kwargs` go to :class:`LinkedChip`
    (``chip_factory``, ``input_queue``, ``rx_timeout``, ``build_name``).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    rx_errors: Out(16)

    @classmethod
    def check_parameters(cls, shape, *, divisor, **kwargs):
        UARTReceiver.check_parameters(divisor)
        LinkedChip.check_parameters(shape, **kwargs)

    def __init__(self, shape, *, divisor, **kwargs):
        self.linked = LinkedChip(shape, **kwargs)
        self.receiver = UARTReceiver(divisor)
        self.transmitter = UARTTransmitter(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.linked = linked = self.linked
        m.submodules.receiver = receiver = self.receiver
        m.submodules.transmitter = transmitter = self.transmitter
        wiring.connect(m, receiver.data, linked.rx)
        wiring.connect(m, linked.tx, transmitter.data)
        m.d.comb += [
            receiver.pin.eq(self.uart_rx),
            self.uart_tx.eq(transmitter.pin),
            self.rx_errors.eq(receiver.errors),
        ]
        return m
