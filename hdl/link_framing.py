"""The host link's framing: COBS decoding with CRC-32 check into a receive buffer, and COBS
encoding of a reply from a reply buffer (docs/protocol.md, section 1).

:class:`FrameReceiver` takes one byte per cycle from ``rx``; when a frame ends (a ``0x00``) it
offers a :class:`ReceivedFrame` on ``frame`` (its status, length and first bytes) and takes no
more bytes until the frame is taken (after its command ran and its reply was sent: the
protocol is stop-and-wait). :class:`FrameTransmitter` sends a byte range of the reply buffer
as one COBS frame with its delimiters.
"""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.protocol import (
    LINK_CRC_BYTES,
    LINK_HEADER_BYTES,
    LINK_MAX_PAYLOAD,
    LINK_MEM_HEADER_BYTES,
    LinkStatus,
)

__all__ = [
    "RX_BUFFER_BYTES", "MIN_FRAME_BYTES", "HEADER_CAPTURE", "REPLY_BUFFER_BYTES", "NAK_BASE", "CRC_PARAMETERS",
    "ReceivedFrame", "BufferReadSignature", "FrameReceiver", "ReplyRange", "FrameTransmitter",
]

#: decoded bytes the receive buffer holds: seq, command, the largest payload, CRC
RX_BUFFER_BYTES = LINK_HEADER_BYTES + LINK_MAX_PAYLOAD + LINK_CRC_BYTES
#: the shortest valid frame body
MIN_FRAME_BYTES = LINK_HEADER_BYTES + LINK_CRC_BYTES
#: the first decoded bytes captured in registers: seq, command and the memory-command header
HEADER_CAPTURE = LINK_HEADER_BYTES + LINK_MEM_HEADER_BYTES
#: where NAK replies are built in the reply buffer (after the stored reply)
NAK_BASE = RX_BUFFER_BYTES
REPLY_BUFFER_BYTES = NAK_BASE + MIN_FRAME_BYTES
#: CRC-32 of the link (= CRC32_ETHERNET = zlib.crc32)
CRC_PARAMETERS = catalog.CRC32_ISO_HDLC(data_width=8)


class ReceivedFrame(data.Struct):
    """A frame that ended: ``status`` is ACK for a good frame (CRC matched), else the NAK it
    earns (TOO_LONG, BAD_FRAMING, BAD_CRC); ``length`` is the decoded body length (seq ..
    CRC); ``mod5`` is ``length % 5``; ``header`` holds its first bytes (seq first)."""
    status: LinkStatus
    length: range(RX_BUFFER_BYTES + 1)
    mod5: range(5)
    header: data.ArrayLayout(8, HEADER_CAPTURE)


class BufferReadSignature(wiring.Signature):
    """A byte buffer's read port, from the reader's side: ``data`` is the byte at the ``addr``
    of the previous cycle."""

    def __init__(self, depth):
        self.depth = depth
        super().__init__({"addr": Out(range(depth)), "data": In(8)})

    def __eq__(self, other):
        return isinstance(other, BufferReadSignature) and self.depth == other.depth


class FrameReceiver(wiring.Component):
    """COBS decoder, CRC-32 check, receive buffer and header capture; one byte per cycle.

    A frame whose COBS is truncated is discarded silently. A watchdog discards a half-received
    frame after `rx_timeout` idle cycles and drops bytes until the next ``0x00``. ``idle`` is
    high while waiting for bytes. ``buffer`` reads the decoded bytes of the offered frame."""

    def __init__(self, rx_timeout):
        self.rx_timeout = rx_timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "frame": Out(stream.Signature(ReceivedFrame)),
            "buffer": In(BufferReadSignature(RX_BUFFER_BYTES)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=8, depth=RX_BUFFER_BYTES, init=[])
        write = memory.write_port()
        read = memory.read_port(transparent_for=())
        m.d.comb += [read.addr.eq(self.buffer.addr), self.buffer.data.eq(read.data)]
        m.submodules.crc = crc = CRC_PARAMETERS.create()

        frame = self.frame.payload
        length = Signal.like(frame.length)
        mod5 = Signal.like(frame.mod5)
        header = Array(Signal(8, name=f"header{i}") for i in range(HEADER_CAPTURE))
        started = Signal()                      # a byte of this frame arrived
        overflow = Signal()
        cobs_remaining = Signal(8)              # data bytes left in the current COBS block
        cobs_zero = Signal()                    # the current block ends with an implicit zero
        hunting = Signal()                      # dropping bytes until the next 0x00
        watchdog = Signal(range(self.rx_timeout + 1))
        status = Signal(LinkStatus)
        m.d.comb += [frame.length.eq(length), frame.mod5.eq(mod5), frame.status.eq(status),
                     *(frame.header[i].eq(header[i]) for i in range(HEADER_CAPTURE))]

        def restart():
            m.d.sync += [length.eq(0), mod5.eq(0), started.eq(0), overflow.eq(0), cobs_remaining.eq(0),
                         cobs_zero.eq(0), watchdog.eq(0)]

        def store(value):
            with m.If(length < RX_BUFFER_BYTES):
                m.d.comb += [write.addr.eq(length), write.data.eq(value), write.en.eq(1),
                             crc.data.eq(value), crc.valid.eq(1), crc.start.eq(length == 0)]
                m.d.sync += [length.eq(length + 1), mod5.eq(Mux(mod5 == 4, 0, mod5 + 1))]
                for i in range(HEADER_CAPTURE):
                    with m.If(length == i):
                        m.d.sync += header[i].eq(value)
            with m.Else():
                m.d.sync += overflow.eq(1)

        def offer(code):
            m.d.sync += status.eq(code)
            m.next = "OFFER"

        with m.FSM(name="receive"):
            with m.State("RECEIVE"):
                m.d.comb += [self.rx.ready.eq(1), self.idle.eq(1)]
                with m.If(self.rx.valid):
                    m.d.sync += watchdog.eq(0)
                    with m.If(self.rx.payload == 0):
                        m.d.sync += hunting.eq(0)
                        with m.If(hunting | ~started | (cobs_remaining != 0)):
                            restart()                   # empty, hunted or truncated: discarded
                        with m.Elif(overflow):
                            offer(LinkStatus.TOO_LONG)
                        with m.Elif(length < MIN_FRAME_BYTES):
                            offer(LinkStatus.BAD_FRAMING)
                        with m.Elif(~crc.match_detected):
                            offer(LinkStatus.BAD_CRC)
                        with m.Else():
                            offer(LinkStatus.ACK)
                    with m.Elif(~hunting):
                        m.d.sync += started.eq(1)
                        with m.If(~started):
                            m.d.sync += header[0].eq(0)     # seq of a frame with no decoded byte
                        with m.If(cobs_remaining == 0):
                            with m.If(cobs_zero):
                                store(0)
                            m.d.sync += [cobs_remaining.eq(self.rx.payload - 1),
                                         cobs_zero.eq(self.rx.payload != 0xFF)]
                        with m.Else():
                            store(self.rx.payload)
                            m.d.sync += cobs_remaining.eq(cobs_remaining - 1)
                with m.Elif(started & ~hunting):
                    with m.If(watchdog == self.rx_timeout - 1):
                        restart()
                        m.d.sync += hunting.eq(1)
                    with m.Else():
                        m.d.sync += watchdog.eq(watchdog + 1)
            with m.State("OFFER"):
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    restart()
                    m.next = "RECEIVE"
        return m


class ReplyRange(data.Struct):
    """The bytes ``start .. end - 1`` of the reply buffer: one frame body to send."""
    start: range(REPLY_BUFFER_BYTES + 1)
    end: range(REPLY_BUFFER_BYTES + 1)


class FrameTransmitter(wiring.Component):
    """COBS encoder: sends the reply buffer's bytes ``send.payload`` as ``0x00``, the COBS
    blocks, ``0x00`` on ``tx``; ``send.ready`` rises when the last byte is taken. About two
    cycles per byte: each block (up to 254 non-zero bytes) is scanned with the read address
    running ahead and the data judged from registered flags, then copied."""

    def __init__(self):
        super().__init__({
            "send": In(stream.Signature(ReplyRange)),
            "tx": Out(stream.Signature(8)),
            "buffer": Out(BufferReadSignature(REPLY_BUFFER_BYTES)),
        })

    def elaborate(self, platform):
        m = Module()
        pointer = Signal(range(REPLY_BUFFER_BYTES + 1))
        pointer_next = Signal.like(pointer)
        m.d.comb += [pointer_next.eq(pointer), self.buffer.addr.eq(pointer_next)]
        m.d.sync += pointer.eq(pointer_next)      # buffer.data is reply_buffer[pointer]
        end = self.send.payload.end
        block_start = Signal.like(pointer)
        block_len = Signal(8)
        block_left = Signal(8)
        block_zero = Signal()                   # the scanned block stopped at a zero byte
        primed = Signal()                       # scan_zero/scan_end describe block_start + block_len
        scan_zero = Signal()
        scan_end = Signal()

        with m.FSM(name="transmit"):
            with m.State("IDLE"):
                with m.If(self.send.valid):
                    m.d.comb += pointer_next.eq(self.send.payload.start)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(0)]
                m.d.sync += [block_start.eq(pointer), block_len.eq(0)]
                with m.If(self.tx.ready):
                    m.next = "SCAN"
            # No path from the buffer's output to its address or to the state: the address
            # runs ahead every cycle, CODE rewinds to the block start.
            with m.State("SCAN"):
                m.d.comb += pointer_next.eq(pointer + 1)
                m.d.sync += [primed.eq(1), scan_zero.eq(self.buffer.data == 0), scan_end.eq(pointer == end)]
                with m.If(primed):
                    with m.If((block_len == 254) | scan_end | scan_zero):
                        m.d.sync += [block_zero.eq((block_len != 254) & ~scan_end), primed.eq(0)]
                        m.next = "CODE"
                    with m.Else():
                        m.d.sync += block_len.eq(block_len + 1)
            with m.State("CODE"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(block_len + 1), pointer_next.eq(block_start)]
                m.d.sync += block_left.eq(block_len)
                with m.If(self.tx.ready):
                    with m.If(block_len == 0):
                        m.next = "NEXT"
                    with m.Else():
                        m.next = "COPY"
            with m.State("COPY"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(self.buffer.data)]
                with m.If(self.tx.ready):
                    m.d.comb += pointer_next.eq(pointer + 1)
                    m.d.sync += block_left.eq(block_left - 1)
                    with m.If(block_left == 1):
                        m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += block_len.eq(0)
                with m.If(block_zero):
                    m.d.comb += pointer_next.eq(pointer + 1)
                    m.d.sync += block_start.eq(pointer + 1)
                    m.next = "SCAN"
                with m.Elif(pointer == end):
                    m.next = "END"
                with m.Else():
                    m.d.sync += block_start.eq(pointer)
                    m.next = "SCAN"
            with m.State("END"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(0)]
                with m.If(self.tx.ready):
                    m.d.comb += self.send.ready.eq(1)
                    m.next = "IDLE"
        return m
