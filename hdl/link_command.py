"""The host link's command execution: a received frame is validated completely, then run
against the chip, its reply built through the reply builder (docs/protocol.md, section 2).

:class:`CommandExecutor` takes a :class:`~neurofabric.hdl.link_framing.ReceivedFrame` (the
receive buffer readable through ``buffer``) and answers it through
:class:`~neurofabric.hdl.link_reply.ReplySignature`; the frame is taken (``frame.ready``)
when its reply has been sent. A frame whose seq is the kept reply's is replayed, not run.
Every check happens before the chip sees anything, so a NAKed frame changes no state:

- WRITE_MEMORY: the header, then every word against the memory map
  (:class:`~neurofabric.hdl.memory_map.WordChecker`) and the rule ``w_min <= w_max`` within
  the frame (OUT_OF_RANGE), BUSY while the chip runs, then the rule against the stored word
  when the frame writes only one of the two (read from the chip first).
- INJECT: every event's core and axon (OUT_OF_RANGE), then the event count against the room
  in the chip's input queue (``input_free``; QUEUE_FULL): pushing never waits.

Memory requests are issued one at a time (request, then its response; ``mem.payload`` stays
unchanged from a request's acceptance until its response).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from neurofabric.hdl.link_framing import (
    MIN_FRAME_BYTES,
    RX_BUFFER_BYTES,
    BufferReadSignature,
    ReceivedFrame,
)
from neurofabric.hdl.link_reply import ReplyOp, ReplySignature
from neurofabric.hdl.memory_map import MEMORY_MAP, WordChecker
from neurofabric.hdl.protocol import (
    LINK_CRC_BYTES,
    LINK_HEADER_BYTES,
    LINK_INPUT_EVENT_BYTES,
    LINK_MAX_OUTPUT_EVENTS,
    LINK_MAX_READ_WORDS,
    LINK_MAX_WRITE_WORDS,
    LINK_MEM_HEADER_BYTES,
    Event,
    InputEvent,
    LinkCommand,
    LinkStatus,
    MemorySpace,
    MemRequest,
)

__all__ = ["INPUT_FREE_BITS", "ChipPortSignature", "CommandExecutor"]

INPUT_FREE_BITS = 17        #: the chip's free input-queue entries, 0 .. 65536

_PAYLOAD = LINK_HEADER_BYTES + LINK_MEM_HEADER_BYTES        # where a memory command's words start


class ChipPortSignature(wiring.Signature):
    """The chip as the link drives it: memory requests and their responses, input events, run
    requests, the output events, ``running`` and the room in its input queue (``input_free``)."""

    def __init__(self):
        super().__init__({
            "mem": Out(stream.Signature(MemRequest)),
            "mem_resp": In(stream.Signature(32)),
            "inject": Out(stream.Signature(InputEvent)),
            "run": Out(stream.Signature(32)),
            "out": In(stream.Signature(Event)),
            "running": In(1),
            "input_free": In(INPUT_FREE_BITS),
        })

    def __eq__(self, other):
        return isinstance(other, ChipPortSignature)


def _order_rule():
    """(space, low address, high address, bits) of the memory map's one Order rule (a pair of
    signed value registers whose ranges fit `bits`: the words are checked before it)."""
    rules = [(space, decl, rule) for space, decl in MEMORY_MAP.items() for rule in decl.rules]
    assert len(rules) == 1, "the link checks one Order rule: extend CommandExecutor for more"
    space, decl, rule = rules[0]
    assert decl.interleaved and all(b.rows == 1 for b in decl.blocks), "Order rules join registers"
    keys = [b.key for b in decl.blocks]
    ranges = [decl.blocks[keys.index(key)].word.fields[decl.blocks[keys.index(key)].word.name].allowed
              for key in (rule.low, rule.high)]
    bits = max(max(hi.bit_length(), (-lo - 1).bit_length()) for lo, hi in ranges) + 1
    return space, keys.index(rule.low), keys.index(rule.high), bits


class _State:
    """The executor's registers, shared by the parts of its state machine."""

    def __init__(self, frame, rule_bits):
        header = frame.header
        self.seq, self.command = header[0], header[1]
        self.space, self.core = header[2], header[3]
        self.count = Cat(header[4], header[5])
        self.addr = Cat(header[6], header[7], header[8], header[9])
        self.run_steps = Cat(header[2], header[3], header[4], header[5])
        self.output_max = Cat(header[2], header[3])
        self.payload_len = Signal(range(RX_BUFFER_BYTES + 1))
        self.payload_end = frame.length - LINK_CRC_BYTES   # where the payload ends in the buffer
        self.header_bad = Signal()              # space, core, count or address range
        self.write_length_bad = Signal()
        self.output_max_bad = Signal()
        self.length_is = {n: Signal(name=f"length_is_{n}") for n in (0, 2, 4, LINK_MEM_HEADER_BYTES)}
        self.length_short = Signal()            # shorter than the memory-command header
        self.length_mod5_bad = Signal()
        self.mem_valid = Signal()               # the MemRequest is offered from registers only
        self.mem_write = Signal()
        self.mem_addr = Signal(24)
        self.words_left = Signal(16)
        self.word_ok = Signal()
        self.low, self.high = Signal(signed(rule_bits)), Signal(signed(rule_bits))  # the Order rule's values
        self.has_low, self.has_high = Signal(), Signal()
        self.status = Signal(LinkStatus)
        self.next = Signal(4)                   # where ACK-BEGIN continues
        self.rx_ptr = Signal(range(RX_BUFFER_BYTES + 1))
        self.rx_ptr_next = Signal.like(self.rx_ptr)
        self.byte_index = Signal(3)
        self.item_bits = Signal(8 * LINK_INPUT_EVENT_BYTES)
        self.item_index = Signal(16)
        self.word = self.item_bits[8:40]        # the last four bytes shifted in
        self.event_step = self.item_bits[0:16]  # wire order of an input event: step, core, axon
        self.event_core = self.item_bits[16:24]
        self.event_axon = self.item_bits[24:40]
        self.out_word = Signal(32)


class CommandExecutor(wiring.Component):
    """Validates and runs one received frame at a time (see the module doc)."""

    frame: In(stream.Signature(ReceivedFrame))
    buffer: Out(BufferReadSignature(RX_BUFFER_BYTES))
    reply: Out(ReplySignature())
    chip: Out(ChipPortSignature())

    #: states an ACK continues with after its header
    EXEC_STATES = ["SEND", "EXEC-IDENTIFY", "EXEC-WRITE-BYTES", "EXEC-READ-REQUEST", "EXEC-INJECT-BYTES",
                   "EXEC-RUN", "EXEC-OUTPUT-POLL"]

    def __init__(self, shape, identify_reply):
        self.shape = shape
        self.identify_reply = bytes(identify_reply)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # addresses are the header check's (addr + count within the space)
        m.submodules.checker = checker = WordChecker(self.shape, check_address=False)
        s = _State(self.frame.payload, _order_rule()[3])
        m.d.comb += [s.rx_ptr_next.eq(s.rx_ptr), self.buffer.addr.eq(s.rx_ptr_next)]
        m.d.sync += s.rx_ptr.eq(s.rx_ptr_next)      # buffer.data is the byte at rx_ptr in every cycle
        mem = self.chip.mem
        m.d.comb += [
            mem.valid.eq(s.mem_valid), mem.payload.write.eq(s.mem_write), mem.payload.mem.eq(s.space),
            mem.payload.core.eq(s.core), mem.payload.addr.eq(s.mem_addr), mem.payload.data.eq(s.word),
            checker.space.eq(s.space), checker.addr.eq(s.mem_addr), checker.data.eq(s.word),
        ]
        with m.FSM(name="command"):
            self._decode(m, s)
            self._dispatch(m, s)
            self._write_checks(m, s, checker)
            self._memory_states(m, s)
            self._inject_states(m, s)
            self._stream_states(m, s)
            self._reply_states(m, s)
        return m

    # --- helpers -----------------------------------------------------------------------------------
    def _nak(self, m, s, code):
        m.d.sync += s.status.eq(code)
        m.next = "NAK"

    def _ack(self, m, s, next_state):
        m.d.sync += [s.byte_index.eq(0), s.next.eq(self.EXEC_STATES.index(next_state))]
        m.next = "ACK-BEGIN"

    def _reply_byte(self, m, value):
        """Offer `value` as the next reply byte; the condition that it was taken."""
        request = self.reply.request
        m.d.comb += [request.valid.eq(1), request.payload.op.eq(ReplyOp.BYTE), request.payload.data.eq(value)]
        return request.ready

    def _shift_in(self, m, s):
        """Shift the byte at rx_ptr into item_bits and advance."""
        m.d.sync += [s.item_bits.eq(Cat(s.item_bits[8:], self.buffer.data)), s.byte_index.eq(s.byte_index + 1)]
        m.d.comb += s.rx_ptr_next.eq(s.rx_ptr + 1)

    # --- receive, decode, dispatch -------------------------------------------------------------------
    def _decode(self, m, s):
        frame = self.frame.payload
        sizes = Array(Const(MEMORY_MAP[space].size(self.shape), 25) for space in MemorySpace)
        with m.State("IDLE"):
            with m.If(self.frame.valid):
                with m.If(frame.status != LinkStatus.ACK):
                    self._nak(m, s, frame.status)
                with m.Else():
                    m.next = "DECODE"
        # Field checks that need adders are registered here, off the dispatch path.
        with m.State("DECODE"):
            count_limit = Array([LINK_MAX_WRITE_WORDS, LINK_MAX_READ_WORDS])[s.command == LinkCommand.READ_MEMORY]
            m.d.sync += [
                s.payload_len.eq(frame.length - MIN_FRAME_BYTES),
                s.header_bad.eq((s.space >= len(MemorySpace)) | (s.core >= self.shape.cores) |
                                (s.count > count_limit) | (s.addr[24:] != 0) |
                                (s.addr[:24] + s.count > sizes[s.space[:4]])),
                s.output_max_bad.eq(s.output_max > LINK_MAX_OUTPUT_EVENTS),
                s.length_mod5_bad.eq(frame.mod5 != (MIN_FRAME_BYTES % 5)),
                s.mem_addr.eq(s.addr), s.words_left.eq(s.count),
                s.has_low.eq(0), s.has_high.eq(0), s.item_index.eq(0), s.mem_write.eq(0),
            ]
            m.next = "DISPATCH-LENGTHS"
        with m.State("DISPATCH-LENGTHS"):
            m.d.sync += [
                s.write_length_bad.eq(s.payload_len != LINK_MEM_HEADER_BYTES + 4 * s.count),
                s.length_short.eq(s.payload_len < LINK_MEM_HEADER_BYTES),
                *(flag.eq(s.payload_len == n) for n, flag in s.length_is.items()),
            ]
            m.next = "DISPATCH"

    def _dispatch(self, m, s):
        with m.State("DISPATCH"):
            m.d.comb += s.rx_ptr_next.eq(_PAYLOAD)
            m.d.sync += [s.item_index.eq(0), s.byte_index.eq(0)]
            with m.If(self.reply.stored & (s.seq == self.reply.stored_seq)):
                m.next = "REPLAY"
            with m.Elif(s.command == LinkCommand.WRITE_MEMORY):
                with m.If(s.length_short):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Elif(s.header_bad):
                    self._nak(m, s, LinkStatus.OUT_OF_RANGE)
                with m.Elif(s.write_length_bad):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Else():
                    m.next = "CHECK-WRITE-NEXT"
            with m.Elif(s.command == LinkCommand.READ_MEMORY):
                with m.If(~s.length_is[LINK_MEM_HEADER_BYTES]):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Elif(s.header_bad):
                    self._nak(m, s, LinkStatus.OUT_OF_RANGE)
                with m.Elif(s.count == 0):
                    self._ack(m, s, "SEND")
                with m.Else():
                    self._ack(m, s, "EXEC-READ-REQUEST")
            with m.Elif(s.command == LinkCommand.INJECT):
                m.d.comb += s.rx_ptr_next.eq(LINK_HEADER_BYTES)
                with m.If(s.length_mod5_bad):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Else():
                    m.next = "CHECK-INJECT-BYTES"
            with m.Elif((s.command == LinkCommand.IDENTIFY) | (s.command == LinkCommand.RESET)):
                with m.If(~s.length_is[0]):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Elif(s.command == LinkCommand.IDENTIFY):
                    self._ack(m, s, "EXEC-IDENTIFY")
                with m.Else():
                    self._ack(m, s, "SEND")
            with m.Elif(s.command == LinkCommand.RUN):
                with m.If(~s.length_is[4]):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Else():
                    self._ack(m, s, "EXEC-RUN")
            with m.Elif(s.command == LinkCommand.READ_OUTPUT):
                with m.If(~s.length_is[2]):
                    self._nak(m, s, LinkStatus.BAD_LENGTH)
                with m.Elif(s.output_max_bad):
                    self._nak(m, s, LinkStatus.OUT_OF_RANGE)
                with m.Else():
                    self._ack(m, s, "EXEC-OUTPUT-POLL")
            with m.Else():
                self._nak(m, s, LinkStatus.UNKNOWN_COMMAND)

    # --- WRITE_MEMORY validation: every word, then BUSY, then the rule against the stored word ---
    def _write_checks(self, m, s, checker):
        rule_space, low_addr, high_addr, bits = _order_rule()
        is_rule_space = s.space == rule_space
        # the address is inside the (register) space here: its low bits tell the registers apart
        rule_addr_bits = ceil_log2(MEMORY_MAP[rule_space].size(self.shape))
        with m.State("CHECK-WRITE-NEXT"):
            with m.If(s.words_left == 0):
                m.next = "CHECK-WRITE-DONE"
            with m.Else():
                m.next = "CHECK-WRITE-BYTES"
        with m.State("CHECK-WRITE-BYTES"):
            self._shift_in(m, s)
            with m.If(s.byte_index == 3):
                m.d.sync += s.byte_index.eq(0)
                m.next = "CHECK-WRITE-WORD"
        # The checker's verdict is registered (WORD), then acted on (VERDICT): its logic ends
        # at a flip-flop.
        with m.State("CHECK-WRITE-WORD"):
            m.d.sync += s.word_ok.eq(checker.ok)
            with m.If(is_rule_space & (s.mem_addr[:rule_addr_bits] == low_addr)):
                m.d.sync += [s.has_low.eq(1), s.low.eq(s.word)]
            with m.If(is_rule_space & (s.mem_addr[:rule_addr_bits] == high_addr)):
                m.d.sync += [s.has_high.eq(1), s.high.eq(s.word)]
            m.next = "CHECK-WRITE-VERDICT"
        with m.State("CHECK-WRITE-VERDICT"):
            with m.If(~s.word_ok):
                self._nak(m, s, LinkStatus.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [s.mem_addr.eq(s.mem_addr + 1), s.words_left.eq(s.words_left - 1)]
                m.next = "CHECK-WRITE-NEXT"
        with m.State("CHECK-WRITE-DONE"):
            m.d.comb += s.rx_ptr_next.eq(_PAYLOAD)
            m.d.sync += [s.mem_addr.eq(s.addr), s.words_left.eq(s.count)]       # for the execution pass
            with m.If(s.has_low & s.has_high & (s.low > s.high)):
                self._nak(m, s, LinkStatus.OUT_OF_RANGE)
            with m.Elif(self.chip.running):
                self._nak(m, s, LinkStatus.BUSY)
            with m.Elif(s.has_low ^ s.has_high):
                m.d.sync += s.mem_addr.eq(Mux(s.has_high, low_addr, high_addr))
                m.next = "CHECK-RULE-REQUEST"
            with m.Elif(s.count == 0):
                self._ack(m, s, "SEND")
            with m.Else():
                m.d.sync += s.mem_write.eq(1)
                self._ack(m, s, "EXEC-WRITE-BYTES")
        with m.State("CHECK-RULE-REQUEST"):
            with m.If(~s.mem_valid):
                m.d.sync += s.mem_valid.eq(1)
            with m.Elif(self.chip.mem.ready):
                m.d.sync += s.mem_valid.eq(0)
                m.next = "CHECK-RULE-RESPONSE"
        # the stored word is registered (into the register the frame does not write), then
        # compared: no path from the chip's response to the state
        with m.State("CHECK-RULE-RESPONSE"):
            m.d.comb += self.chip.mem_resp.ready.eq(1)
            with m.If(self.chip.mem_resp.valid):
                stored = self.chip.mem_resp.payload[:bits]      # a checked value: it fits
                with m.If(s.has_low):
                    m.d.sync += s.high.eq(stored)
                with m.Else():
                    m.d.sync += s.low.eq(stored)
                m.d.sync += [s.mem_addr.eq(s.addr), s.mem_write.eq(1)]
                m.next = "CHECK-RULE-VERDICT"
        with m.State("CHECK-RULE-VERDICT"):
            with m.If(s.low > s.high):
                self._nak(m, s, LinkStatus.OUT_OF_RANGE)
            with m.Else():
                self._ack(m, s, "EXEC-WRITE-BYTES")

    # --- WRITE_MEMORY / READ_MEMORY execution ----------------------------------------------------------
    def _memory_states(self, m, s):
        # Requests come from registers (a cycle to raise `valid`): no path from the state
        # decode into the chip.
        def request(name, next_state):
            with m.State(name):
                with m.If(~s.mem_valid):
                    m.d.sync += s.mem_valid.eq(1)
                with m.Elif(self.chip.mem.ready):
                    m.d.sync += s.mem_valid.eq(0)
                    m.next = next_state

        with m.State("EXEC-WRITE-BYTES"):
            self._shift_in(m, s)
            with m.If(s.byte_index == 3):
                m.d.sync += s.byte_index.eq(0)
                m.next = "EXEC-WRITE-REQUEST"
        request("EXEC-WRITE-REQUEST", "EXEC-WRITE-RESPONSE")
        with m.State("EXEC-WRITE-RESPONSE"):
            m.d.comb += self.chip.mem_resp.ready.eq(1)
            with m.If(self.chip.mem_resp.valid):
                m.d.sync += [s.words_left.eq(s.words_left - 1), s.mem_addr.eq(s.mem_addr + 1)]
                with m.If(s.words_left == 1):
                    m.next = "SEND"
                with m.Else():
                    m.next = "EXEC-WRITE-BYTES"
        request("EXEC-READ-REQUEST", "EXEC-READ-RESPONSE")
        with m.State("EXEC-READ-RESPONSE"):
            m.d.comb += self.chip.mem_resp.ready.eq(1)
            with m.If(self.chip.mem_resp.valid):
                m.d.sync += [s.out_word.eq(self.chip.mem_resp.payload), s.words_left.eq(s.words_left - 1),
                             s.mem_addr.eq(s.mem_addr + 1), s.byte_index.eq(0)]
                m.next = "EXEC-READ-BYTES"
        with m.State("EXEC-READ-BYTES"):
            with m.If(self._reply_byte(m, s.out_word.word_select(s.byte_index[:2], 8))):
                m.d.sync += s.byte_index.eq(s.byte_index + 1)
                with m.If(s.byte_index == 3):
                    m.d.sync += s.byte_index.eq(0)
                    with m.If(s.words_left == 0):
                        m.next = "SEND"
                    with m.Else():
                        m.next = "EXEC-READ-REQUEST"

    # --- INJECT: validation pass (events, then room in the queue), then execution pass ------------
    def _inject_states(self, m, s):
        with m.State("CHECK-INJECT-BYTES"):
            with m.If(s.rx_ptr == s.payload_end):
                m.d.comb += s.rx_ptr_next.eq(LINK_HEADER_BYTES)
                with m.If(s.item_index > self.chip.input_free):
                    self._nak(m, s, LinkStatus.QUEUE_FULL)
                with m.Else():
                    self._ack(m, s, "EXEC-INJECT-BYTES")
            with m.Else():
                self._shift_in(m, s)
                with m.If(s.byte_index == LINK_INPUT_EVENT_BYTES - 1):
                    m.next = "CHECK-INJECT-EVENT"
        with m.State("CHECK-INJECT-EVENT"):
            m.d.sync += [s.byte_index.eq(0), s.item_index.eq(s.item_index + 1)]
            with m.If((s.event_core >= self.shape.cores) | (s.event_axon >= self.shape.axons)):
                self._nak(m, s, LinkStatus.OUT_OF_RANGE)
            with m.Else():
                m.next = "CHECK-INJECT-BYTES"
        with m.State("EXEC-INJECT-BYTES"):
            with m.If(s.rx_ptr == s.payload_end):
                m.next = "SEND"
            with m.Else():
                self._shift_in(m, s)
                with m.If(s.byte_index == LINK_INPUT_EVENT_BYTES - 1):
                    m.next = "EXEC-INJECT-PUSH"
        with m.State("EXEC-INJECT-PUSH"):
            inject = self.chip.inject
            m.d.comb += [inject.valid.eq(1), inject.payload.step.eq(s.event_step),
                         inject.payload.core.eq(s.event_core), inject.payload.axon.eq(s.event_axon)]
            with m.If(inject.ready):
                m.d.sync += s.byte_index.eq(0)
                m.next = "EXEC-INJECT-BYTES"

    # --- IDENTIFY, RUN, READ_OUTPUT ----------------------------------------------------------------
    def _stream_states(self, m, s):
        identify = Array(Const(b, 8) for b in self.identify_reply)
        with m.State("EXEC-IDENTIFY"):
            # (indexed by the bits that count the reply's bytes: a small multiplexer)
            with m.If(self._reply_byte(m, identify[s.item_index[:ceil_log2(len(self.identify_reply))]])):
                m.d.sync += s.item_index.eq(s.item_index + 1)
                with m.If(s.item_index == len(self.identify_reply) - 1):
                    m.next = "SEND"
        with m.State("EXEC-RUN"):
            m.d.comb += [self.chip.run.valid.eq(1), self.chip.run.payload.eq(s.run_steps)]
            with m.If(self.chip.run.ready):
                m.next = "SEND"
        # READ_OUTPUT: take the events the chip offers now, up to the requested maximum.
        out = self.chip.out
        with m.State("EXEC-OUTPUT-POLL"):
            with m.If((s.item_index == s.output_max) | ~out.valid):
                m.next = "SEND"
            with m.Else():
                m.d.comb += out.ready.eq(1)
                m.d.sync += [s.out_word.eq(out.payload.as_value()), s.item_index.eq(s.item_index + 1),
                             s.byte_index.eq(0)]
                m.next = "EXEC-OUTPUT-BYTES"
        with m.State("EXEC-OUTPUT-BYTES"):
            with m.If(self._reply_byte(m, s.out_word.word_select(s.byte_index[:2], 8))):
                m.d.sync += s.byte_index.eq(s.byte_index + 1)
                with m.If(s.byte_index == 3):
                    m.d.sync += s.byte_index.eq(0)
                    m.next = "EXEC-OUTPUT-POLL"

    # --- replies: header, send, replay; the frame is taken when its reply is out ---------------------
    def _reply_states(self, m, s):
        request = self.reply.request
        m.d.comb += request.payload.seq.eq(s.seq)

        def send(name, op, status=None, next_state=None):
            with m.State(name):
                m.d.comb += [request.valid.eq(1), request.payload.op.eq(op)]
                if status is not None:
                    m.d.comb += request.payload.data.eq(status)
                if op == ReplyOp.SEND:
                    m.d.comb += request.payload.forget.eq(s.command == LinkCommand.RESET)
                with m.If(request.ready):
                    if next_state is None:
                        m.d.comb += self.frame.ready.eq(1)
                        m.next = "IDLE"
                    else:
                        next_state()

        def continue_ack():
            with m.Switch(s.next):
                for index, name in enumerate(self.EXEC_STATES):
                    with m.Case(index):
                        m.next = name

        def nak_sent():
            m.next = "NAK-SEND"

        send("ACK-BEGIN", ReplyOp.BEGIN, LinkStatus.ACK, continue_ack)
        send("NAK", ReplyOp.BEGIN, s.status.as_value(), nak_sent)
        send("NAK-SEND", ReplyOp.SEND)
        send("SEND", ReplyOp.SEND)
        send("REPLAY", ReplyOp.REPLAY)
