"""The host link's replies: built in a reply buffer with their CRC-32, sent through the COBS
encoder, and the last ACK kept for replay (docs/protocol.md, sections 3 and 4).

The command executor (``neurofabric.hdl.link_command``) drives :class:`ReplySignature`: a
stream of :class:`ReplyRequest` (begin a reply, append a byte, send it, or re-send the stored
one) and sees which reply is stored (``stored``, ``stored_seq``). ACK replies are built at the
start of the buffer and kept (except RESET's, which forgets the stored one); NAKs are built
after it, so a NAK never overwrites the stored reply.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.link_framing import CRC_PARAMETERS, NAK_BASE, REPLY_BUFFER_BYTES, FrameTransmitter
from neurofabric.hdl.protocol import LinkStatus

__all__ = ["ReplyOp", "ReplyRequest", "ReplySignature", "ReplyBuilder"]


class ReplyOp(enum.Enum, shape=2):
    BEGIN = 0       #: start a reply: `seq`, then the status `data` (ACK: the part kept for replay)
    BYTE = 1        #: append `data` to the reply's payload
    SEND = 2        #: append the CRC and send the reply; an ACK is kept (forgotten if `forget`)
    REPLAY = 3      #: send the kept reply again


class ReplyRequest(data.Struct):
    op: ReplyOp
    data: 8
    seq: 8
    forget: 1       #: with SEND of an ACK: forget the kept reply instead of keeping this one


class ReplySignature(wiring.Signature):
    """The executor's side of the reply builder: ``request`` is taken when done (BEGIN in two
    cycles, BYTE in one, SEND and REPLAY once the frame's last byte is on ``tx``)."""

    def __init__(self):
        super().__init__({
            "request": Out(stream.Signature(ReplyRequest)),
            "stored": In(1),            #: a reply is kept for replay
            "stored_seq": In(8),        #: ... and this is its seq
        })

    def __eq__(self, other):
        return isinstance(other, ReplySignature)


class ReplyBuilder(wiring.Component):
    """Reply buffer, reply CRC, the replay state and the COBS transmitter (``tx``)."""

    reply: In(ReplySignature())
    tx: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=8, depth=REPLY_BUFFER_BYTES, init=[])
        write = memory.write_port()
        read = memory.read_port(transparent_for=())
        m.submodules.crc = crc = CRC_PARAMETERS.create()
        m.submodules.transmitter = transmitter = FrameTransmitter()
        wiring.connect(m, transmitter.tx, wiring.flipped(self.tx))
        m.d.comb += [read.addr.eq(transmitter.buffer.addr), transmitter.buffer.data.eq(read.data)]

        request = self.reply.request
        base = Signal(range(REPLY_BUFFER_BYTES))
        pointer = Signal(range(REPLY_BUFFER_BYTES + 1))
        byte_index = Signal(2)
        stored_end = Signal.like(pointer)
        m.d.comb += [transmitter.send.payload.start.eq(base), transmitter.send.payload.end.eq(pointer)]

        def append(value, first=False):
            m.d.comb += [write.addr.eq(pointer), write.data.eq(value), write.en.eq(1),
                         crc.data.eq(value), crc.valid.eq(1), crc.start.eq(first)]
            m.d.sync += pointer.eq(pointer + 1)

        with m.FSM(name="reply"):
            with m.State("IDLE"):
                with m.If(request.valid):
                    with m.Switch(request.payload.op):
                        with m.Case(ReplyOp.BEGIN):
                            start = Mux(request.payload.data == LinkStatus.ACK, 0, NAK_BASE)
                            m.d.comb += [write.addr.eq(start), write.data.eq(request.payload.seq), write.en.eq(1),
                                         crc.data.eq(request.payload.seq), crc.valid.eq(1), crc.start.eq(1)]
                            m.d.sync += [base.eq(start), pointer.eq(start + 1)]
                            m.next = "STATUS"
                        with m.Case(ReplyOp.BYTE):
                            append(request.payload.data)
                            m.d.comb += request.ready.eq(1)
                        with m.Case(ReplyOp.SEND):
                            m.d.sync += byte_index.eq(0)
                            m.next = "CRC"
                        with m.Case(ReplyOp.REPLAY):
                            m.d.sync += [base.eq(0), pointer.eq(stored_end)]
                            m.next = "TRANSMIT"
            with m.State("STATUS"):
                append(request.payload.data)
                m.d.comb += request.ready.eq(1)
                m.next = "IDLE"
            # CRC-32 of the reply, little-endian; an ACK becomes the kept reply.
            with m.State("CRC"):
                m.d.comb += [write.addr.eq(pointer), write.en.eq(1), write.data.eq(crc.crc.word_select(byte_index, 8))]
                m.d.sync += [pointer.eq(pointer + 1), byte_index.eq(byte_index + 1)]
                with m.If(byte_index == 3):
                    with m.If(base == 0):
                        m.d.sync += [self.reply.stored.eq(~request.payload.forget),
                                     self.reply.stored_seq.eq(request.payload.seq), stored_end.eq(pointer + 1)]
                    m.next = "TRANSMIT"
            with m.State("TRANSMIT"):
                m.d.comb += transmitter.send.valid.eq(1)
                with m.If(transmitter.send.ready):
                    m.d.comb += request.ready.eq(1)
                    m.next = "IDLE"
        return m
