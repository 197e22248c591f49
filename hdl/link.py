"""The host link: COBS/CRC-32 framed commands over a byte stream, executed against the chip.

:class:`HostLink` sits between a byte stream (UART PHY on boards, a socket in the sim device)
and the chip's ``mem``/``inject``/``run``/``out`` streams. The wire format, every command and
every status code are specified in docs/protocol.md and ``neurofabric.hdl.protocol``
(``LinkCommand``, ``LinkStatus``, ``LINK_*``).

Receive path (one byte per cycle): bytes are COBS-decoded on the fly into a receive buffer
while a CRC-32 checks them; the first 10 decoded bytes (seq, command and the fixed payload
header) are also captured in registers. A ``0x00`` ends a frame. A frame whose COBS is
truncated is discarded silently; one longer than the buffer is NAKed ``TOO_LONG``; one shorter
than seq + command + CRC is NAKed ``BAD_FRAMING``; a CRC mismatch is NAKed ``BAD_CRC``.
A receive watchdog discards a half-received frame after ``rx_timeout`` idle cycles and drops
bytes until the next ``0x00``.

Execution: one cycle registers the field checks that need adders (DECODE), then a good frame
whose seq equals the seq of the last executed command replays that command's stored reply
without executing it again. Otherwise the command's fields are all validated (length, space,
core, count, address range, every injected event) before anything is sent to the chip, so a
NAKed frame changes no state. Memory accesses are issued one at a time (request, then its
response; ``mem.payload`` stays unchanged from a request's acceptance until its response). Replies are built in a reply buffer with their CRC, then COBS-encoded to ``tx``
(about two cycles per byte: each block is scanned with the read address running ahead and
the data judged from registered flags, then copied). NAK replies go to a separate part of the
buffer so the stored reply of the last executed command survives them.

While a frame is executed or a reply is sent, ``rx.ready`` is low: the protocol is
stop-and-wait, so a well-behaved host never sends then.
"""

from amaranth.hdl import Array, Assert, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.protocol import (
    ENCODER_CHANNELS_MAX,
    LINK_BUILD_NAME_BYTES,
    LINK_CRC_BYTES,
    LINK_FEATURE_ENCODER,
    LINK_HEADER_BYTES,
    LINK_INPUT_EVENT_BYTES,
    LINK_MAX_OUTPUT_EVENTS,
    LINK_MAX_PAYLOAD,
    LINK_MAX_READ_WORDS,
    LINK_MAX_WRITE_WORDS,
    LINK_MEM_HEADER_BYTES,
    LINK_VERSION,
    Event,
    InputEvent,
    LinkCommand,
    LinkStatus,
    MemorySpace,
    MemRequest,
)

__all__ = ["HostLink", "identify_payload", "check_build_name"]

#: decoded bytes the receive buffer holds: seq, command, the largest payload, CRC
RX_BUFFER_BYTES = LINK_HEADER_BYTES + LINK_MAX_PAYLOAD + LINK_CRC_BYTES
#: the shortest valid frame body
MIN_FRAME_BYTES = LINK_HEADER_BYTES + LINK_CRC_BYTES
#: where NAK replies are built in the reply buffer (after the stored reply)
NAK_BASE = RX_BUFFER_BYTES
REPLY_BUFFER_BYTES = NAK_BASE + MIN_FRAME_BYTES
HEADER_CAPTURE = LINK_HEADER_BYTES + LINK_MEM_HEADER_BYTES


def check_build_name(build_name):
    """Return `build_name` if it is printable ASCII of at most 16 bytes; raise ValueError."""
    if not isinstance(build_name, str):
        raise ValueError(f"build_name must be a str, not {build_name!r}")
    if not (build_name.isascii() and build_name.isprintable()):
        raise ValueError(f"build_name = {build_name!r} must be printable ASCII")
    if len(build_name) > LINK_BUILD_NAME_BYTES:
        raise ValueError(f"build_name = {build_name!r} has {len(build_name)} bytes: "
                         f"allowed [0, {LINK_BUILD_NAME_BYTES}]")
    return build_name


def identify_payload(shape, input_queue, *, features=0, build_name="sim", encoder_channels=0):
    """The IDENTIFY reply payload for a chip of `shape` (docs/protocol.md): `features` is a
    bitmask (:data:`LINK_FEATURE_LEARNING`), `build_name` names the build (<= 16 ASCII bytes),
    `encoder_channels` the chip's input encoder channels (non-zero sets
    :data:`LINK_FEATURE_ENCODER`)."""
    if not isinstance(features, int) or not 0 <= features <= 0xFFFF:
        raise ValueError(f"features = {features!r} is out of range: allowed [0, 65535]")
    if not isinstance(encoder_channels, int) or not 0 <= encoder_channels <= ENCODER_CHANNELS_MAX:
        raise ValueError(f"encoder_channels = {encoder_channels!r} is out of range: allowed "
                         f"[0, {ENCODER_CHANNELS_MAX}]")
    if features & LINK_FEATURE_ENCODER and not encoder_channels:
        raise ValueError("features has LINK_FEATURE_ENCODER but encoder_channels = 0")
    if encoder_channels:
        features |= LINK_FEATURE_ENCODER
    name = check_build_name(build_name).encode("ascii").ljust(LINK_BUILD_NAME_BYTES, b"\0")
    fields = [
        (LINK_VERSION, 2), (shape.cores, 2), (shape.neurons, 4), (shape.axons, 4),
        (shape.lanes, 2), (shape.route_entries, 4), (input_queue, 2), (LINK_MAX_PAYLOAD, 2),
        (features, 2), (encoder_channels, 2),
    ]
    return b"".join(value.to_bytes(size, "little") for value, size in fields) + name


class HostLink(wiring.Component):
    """Frame decoder, command executor and reply encoder of the host link.

    Parameters
    ----------
    shape : ChipShape
        The chip behind the link (reported by IDENTIFY; bounds ``core`` and ``axon`` fields).
    input_queue : int
        Input events the chip buffers ahead of the running step (reported by IDENTIFY).
    rx_timeout : int
        Cycles without a byte after which a half-received frame is discarded.
    features : int
        IDENTIFY feature bits (:data:`LINK_FEATURE_LEARNING`).
    build_name : str
        The build's name reported by IDENTIFY (printable ASCII, at most 16 bytes).
    encoder_channels : int or None
        The chip's input encoder channels, reported by IDENTIFY (0: no encoder); None (the
        default) takes ``shape.encoder_channels``, which is what ``neurofabric.hdl.chip.Chip``
        builds.

    Ports: ``rx``/``tx`` byte streams to the host; ``mem``, ``mem_resp``, ``inject``, ``run``,
    ``out``, ``running`` to the chip (see ``neurofabric.hdl.top``); ``idle`` is high while the
    link waits for bytes (nothing to execute or send; only the receive watchdog counts).
    """

    def __init__(self, shape, *, input_queue=0, rx_timeout=1_000_000, features=0, build_name="sim",
                 encoder_channels=None):
        if not isinstance(input_queue, int) or not 0 <= input_queue <= 0xFFFF:
            raise ValueError(f"input_queue = {input_queue!r} is out of range: allowed [0, 65535]")
        if not isinstance(rx_timeout, int) or not 1 <= rx_timeout <= (1 << 32) - 1:
            raise ValueError(f"rx_timeout = {rx_timeout!r} is out of range: allowed [1, 2**32 - 1]")
        self.shape = shape
        self.input_queue = input_queue
        self.rx_timeout = rx_timeout
        if encoder_channels is None:
            encoder_channels = getattr(shape, "encoder_channels", 0)
        self.identify_reply = identify_payload(shape, input_queue, features=features, build_name=build_name,
                                               encoder_channels=encoder_channels)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "mem": Out(stream.Signature(MemRequest)),
            "mem_resp": In(stream.Signature(32)),
            "inject": Out(stream.Signature(InputEvent)),
            "run": Out(stream.Signature(32)),
            "out": In(stream.Signature(Event)),
            "running": In(1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        shape = self.shape

        m.submodules.rx_buffer = rx_buffer = Memory(shape=8, depth=RX_BUFFER_BYTES, init=[])
        rx_write = rx_buffer.write_port()
        rx_read = rx_buffer.read_port(transparent_for=())
        m.submodules.reply_buffer = reply_buffer = Memory(shape=8, depth=REPLY_BUFFER_BYTES, init=[])
        reply_write = reply_buffer.write_port()
        reply_read = reply_buffer.read_port(transparent_for=())
        crc_parameters = catalog.CRC32_ISO_HDLC(data_width=8)    # = CRC32_ETHERNET = zlib.crc32
        m.submodules.rx_crc = rx_crc = crc_parameters.create()
        m.submodules.tx_crc = tx_crc = crc_parameters.create()

        # --- receive state: COBS decoder, length, header capture, watchdog ----------------------
        rx_len = Signal(range(RX_BUFFER_BYTES + 1))
        rx_mod5 = Signal(range(5))              # rx_len % 5, for the INJECT length check
        rx_any = Signal()                       # a byte of this frame arrived
        rx_overflow = Signal()
        cobs_remaining = Signal(8)              # data bytes left in the current COBS block
        cobs_zero = Signal()                    # the current block ends with an implicit zero
        hunting = Signal()                      # dropping bytes until the next 0x00
        watchdog = Signal(range(self.rx_timeout + 1))
        header = Array(Signal(8, name=f"header{i}") for i in range(HEADER_CAPTURE))

        seq = header[0]
        command = header[1]
        space = header[2]
        core = header[3]
        count = Cat(header[4], header[5])
        addr = Cat(header[6], header[7], header[8], header[9])
        run_steps = Cat(header[2], header[3], header[4], header[5])
        output_max = Cat(header[2], header[3])
        payload_len = Signal(range(RX_BUFFER_BYTES + 1))
        m.d.comb += payload_len.eq(rx_len - MIN_FRAME_BYTES)
        payload_end = Signal.like(rx_len)
        m.d.comb += payload_end.eq(rx_len - LINK_CRC_BYTES)

        # --- decoded checks, registered one cycle after the frame ends (DECODE) -----------------
        mem_fields_bad = Signal()
        write_count_bad = Signal()
        read_count_bad = Signal()
        write_length_bad = Signal()
        output_max_bad = Signal()
        length_is = {n: Signal(name=f"length_is_{n}") for n in (0, 2, 4, LINK_MEM_HEADER_BYTES)}
        length_short = Signal()                 # shorter than the memory-command header
        length_mod5_bad = Signal()
        mem_addr = Signal(24)                   # address of the next MemRequest
        words_left = Signal(16)                 # words of WRITE/READ not yet requested/answered
        mem_valid = Signal()                    # the MemRequest is offered from registers only

        # --- replay state --------------------------------------------------------------------------
        have_reply = Signal()
        last_seq = Signal(8)
        stored_end = Signal(range(REPLY_BUFFER_BYTES + 1))

        # --- execution state -----------------------------------------------------------------------
        status = Signal(8)
        rx_ptr = Signal(range(RX_BUFFER_BYTES + 1))
        rx_ptr_next = Signal.like(rx_ptr)
        m.d.comb += [rx_ptr_next.eq(rx_ptr), rx_read.addr.eq(rx_ptr_next)]
        m.d.sync += rx_ptr.eq(rx_ptr_next)      # rx_read.data is rx_buffer[rx_ptr] in every cycle
        rx_byte = rx_read.data
        byte_index = Signal(3)
        item_bits = Signal(8 * LINK_INPUT_EVENT_BYTES)
        item_index = Signal(16)
        word = item_bits[8:40]                  # the last four bytes shifted in
        event_step = item_bits[0:16]            # wire order of an input event: step, core, axon
        event_core = item_bits[16:24]
        event_axon = item_bits[24:40]
        out_word = Signal(32)

        # --- reply buffer ----------------------------------------------------------------------------
        reply_base = Signal(range(REPLY_BUFFER_BYTES))
        reply_ptr = Signal(range(REPLY_BUFFER_BYTES + 1))
        tx_ptr = Signal(range(REPLY_BUFFER_BYTES + 1))
        tx_ptr_next = Signal.like(tx_ptr)
        m.d.comb += [tx_ptr_next.eq(tx_ptr), reply_read.addr.eq(tx_ptr_next)]
        m.d.sync += tx_ptr.eq(tx_ptr_next)      # reply_read.data is reply_buffer[tx_ptr]
        tx_end = Signal.like(tx_ptr)
        block_start = Signal.like(tx_ptr)
        block_len = Signal(8)
        block_left = Signal(8)
        block_zero = Signal()                   # the scanned block stopped at a zero byte
        scan_primed = Signal()                  # scan_zero/scan_end describe block_start + block_len
        scan_zero = Signal()
        scan_end = Signal()

        identify_bytes = Array(Const(b, 8) for b in self.identify_reply)

        def reply_byte(value, first=False):
            """Append `value` to the reply being built (and to its CRC)."""
            m.d.comb += Assert(reply_ptr < Mux(reply_base == 0, NAK_BASE, REPLY_BUFFER_BYTES),
                               "reply overruns its part of the reply buffer")
            m.d.comb += [
                reply_write.addr.eq(reply_ptr), reply_write.data.eq(value), reply_write.en.eq(1),
                tx_crc.data.eq(value), tx_crc.valid.eq(1), tx_crc.start.eq(first),
            ]
            m.d.sync += reply_ptr.eq(reply_ptr + 1)

        def nak(code):
            m.d.sync += [status.eq(code), reply_base.eq(NAK_BASE), reply_ptr.eq(NAK_BASE),
                         byte_index.eq(0)]
            m.next = "REPLY-HEADER"

        def ack(next_state):
            m.d.sync += [status.eq(LinkStatus.ACK), reply_base.eq(0), reply_ptr.eq(0),
                         byte_index.eq(0), reply_next.eq(next_state)]
            m.next = "REPLY-HEADER"

        # Where REPLY-HEADER continues for an ACK: an execution state, then REPLY-CRC.
        exec_states = ["REPLY-CRC", "EXEC-IDENTIFY", "EXEC-WRITE-BYTES", "EXEC-READ-REQUEST",
                       "EXEC-INJECT-BYTES", "EXEC-RUN", "EXEC-OUTPUT-POLL"]
        reply_next = Signal(range(len(exec_states)))

        def rx_reset():
            m.d.sync += [rx_len.eq(0), rx_mod5.eq(0), rx_any.eq(0), rx_overflow.eq(0),
                         cobs_remaining.eq(0), cobs_zero.eq(0), watchdog.eq(0)]

        def store_decoded(value):
            with m.If(rx_len < RX_BUFFER_BYTES):
                m.d.comb += [
                    rx_write.addr.eq(rx_len), rx_write.data.eq(value), rx_write.en.eq(1),
                    rx_crc.data.eq(value), rx_crc.valid.eq(1), rx_crc.start.eq(rx_len == 0),
                ]
                m.d.sync += [rx_len.eq(rx_len + 1), rx_mod5.eq(Mux(rx_mod5 == 4, 0, rx_mod5 + 1))]
                for i in range(HEADER_CAPTURE):
                    with m.If(rx_len == i):
                        m.d.sync += header[i].eq(value)
            with m.Else():
                m.d.sync += rx_overflow.eq(1)

        m.d.comb += [
            self.mem.valid.eq(mem_valid),
            self.mem.payload.write.eq(command == LinkCommand.WRITE_MEMORY),
            self.mem.payload.mem.eq(space),
            self.mem.payload.core.eq(core),
            self.mem.payload.addr.eq(mem_addr),
            self.mem.payload.data.eq(word),
        ]

        with m.FSM(name="link"):
            with m.State("RECEIVE"):
                m.d.comb += [self.rx.ready.eq(1), self.idle.eq(1)]
                with m.If(self.rx.valid):
                    m.d.sync += watchdog.eq(0)
                    with m.If(self.rx.payload == 0):
                        rx_reset()
                        m.d.sync += hunting.eq(0)
                        with m.If(hunting | ~rx_any):
                            pass                            # empty frame between delimiters
                        with m.Elif(cobs_remaining != 0):
                            pass                            # truncated COBS block: discard silently
                        with m.Elif(rx_overflow):
                            nak(LinkStatus.TOO_LONG)
                        with m.Elif(rx_len < MIN_FRAME_BYTES):
                            nak(LinkStatus.BAD_FRAMING)
                        with m.Elif(~rx_crc.match_detected):
                            nak(LinkStatus.BAD_CRC)
                        with m.Else():
                            m.d.sync += [rx_len.eq(rx_len), rx_mod5.eq(rx_mod5)]   # keep for execution
                            m.next = "DECODE"
                    with m.Elif(~hunting):
                        m.d.sync += rx_any.eq(1)
                        with m.If(~rx_any):
                            m.d.sync += header[0].eq(0)     # seq of a frame with no decoded byte
                        with m.If(cobs_remaining == 0):
                            with m.If(cobs_zero):
                                store_decoded(0)
                            m.d.sync += [cobs_remaining.eq(self.rx.payload - 1),
                                         cobs_zero.eq(self.rx.payload != 0xFF)]
                        with m.Else():
                            store_decoded(self.rx.payload)
                            m.d.sync += cobs_remaining.eq(cobs_remaining - 1)
                with m.Elif(rx_any & ~hunting):
                    with m.If(watchdog == self.rx_timeout - 1):
                        rx_reset()
                        m.d.sync += hunting.eq(1)
                    with m.Else():
                        m.d.sync += watchdog.eq(watchdog + 1)

            # Field checks that need adders are registered here, off the dispatch path.
            with m.State("DECODE"):
                m.d.sync += [
                    mem_fields_bad.eq((space >= len(MemorySpace)) | (core >= shape.cores) |
                                      (addr + count > (1 << 24))),
                    write_count_bad.eq(count > LINK_MAX_WRITE_WORDS),
                    read_count_bad.eq(count > LINK_MAX_READ_WORDS),
                    write_length_bad.eq(payload_len != LINK_MEM_HEADER_BYTES + 4 * count),
                    output_max_bad.eq(output_max > LINK_MAX_OUTPUT_EVENTS),
                    length_short.eq(payload_len < LINK_MEM_HEADER_BYTES),
                    length_mod5_bad.eq(rx_mod5 != (MIN_FRAME_BYTES % 5)),
                    *(flag.eq(payload_len == n) for n, flag in length_is.items()),
                    mem_addr.eq(addr),
                    words_left.eq(count),
                ]
                m.next = "DISPATCH"

            with m.State("DISPATCH"):
                m.d.comb += rx_ptr_next.eq(LINK_HEADER_BYTES + LINK_MEM_HEADER_BYTES)
                m.d.sync += [item_index.eq(0), byte_index.eq(0)]
                with m.If(have_reply & (seq == last_seq)):
                    m.d.sync += [tx_ptr.eq(0), tx_end.eq(stored_end)]
                    m.next = "TX-START"
                with m.Elif(command == LinkCommand.IDENTIFY):
                    with m.If(~length_is[0]):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Else():
                        ack(exec_states.index("EXEC-IDENTIFY"))
                with m.Elif(command == LinkCommand.WRITE_MEMORY):
                    with m.If(length_short):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Elif(mem_fields_bad | write_count_bad):
                        nak(LinkStatus.OUT_OF_RANGE)
                    with m.Elif(write_length_bad):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Elif(self.running):
                        nak(LinkStatus.BUSY)
                    with m.Elif(count == 0):
                        ack(exec_states.index("REPLY-CRC"))
                    with m.Else():
                        ack(exec_states.index("EXEC-WRITE-BYTES"))
                with m.Elif(command == LinkCommand.READ_MEMORY):
                    with m.If(~length_is[LINK_MEM_HEADER_BYTES]):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Elif(mem_fields_bad | read_count_bad):
                        nak(LinkStatus.OUT_OF_RANGE)
                    with m.Elif(count == 0):
                        ack(exec_states.index("REPLY-CRC"))
                    with m.Else():
                        ack(exec_states.index("EXEC-READ-REQUEST"))
                with m.Elif(command == LinkCommand.INJECT):
                    m.d.comb += rx_ptr_next.eq(LINK_HEADER_BYTES)
                    with m.If(length_mod5_bad):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Else():
                        m.next = "CHECK-INJECT-BYTES"
                with m.Elif(command == LinkCommand.RUN):
                    with m.If(~length_is[4]):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Else():
                        ack(exec_states.index("EXEC-RUN"))
                with m.Elif(command == LinkCommand.READ_OUTPUT):
                    with m.If(~length_is[2]):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Elif(output_max_bad):
                        nak(LinkStatus.OUT_OF_RANGE)
                    with m.Else():
                        ack(exec_states.index("EXEC-OUTPUT-POLL"))
                with m.Elif(command == LinkCommand.RESET):
                    with m.If(~length_is[0]):
                        nak(LinkStatus.BAD_LENGTH)
                    with m.Else():
                        ack(exec_states.index("REPLY-CRC"))
                with m.Else():
                    nak(LinkStatus.UNKNOWN_COMMAND)

            # INJECT, validation pass: every event's core and axon in range.
            with m.State("CHECK-INJECT-BYTES"):
                with m.If(rx_ptr == payload_end):
                    m.d.comb += rx_ptr_next.eq(LINK_HEADER_BYTES)
                    ack(exec_states.index("EXEC-INJECT-BYTES"))
                with m.Else():
                    m.d.sync += [item_bits.eq(Cat(item_bits[8:], rx_byte)), byte_index.eq(byte_index + 1)]
                    m.d.comb += rx_ptr_next.eq(rx_ptr + 1)
                    with m.If(byte_index == LINK_INPUT_EVENT_BYTES - 1):
                        m.next = "CHECK-INJECT-EVENT"
            with m.State("CHECK-INJECT-EVENT"):
                m.d.sync += byte_index.eq(0)
                with m.If((event_core >= shape.cores) | (event_axon >= shape.axons)):
                    nak(LinkStatus.OUT_OF_RANGE)
                with m.Else():
                    m.next = "CHECK-INJECT-BYTES"

            # Reply header (seq, status), for ACKs and NAKs alike.
            with m.State("REPLY-HEADER"):
                m.d.sync += byte_index.eq(byte_index + 1)
                with m.If(byte_index == 0):
                    reply_byte(seq, first=True)
                with m.Else():
                    reply_byte(status)
                    m.d.sync += byte_index.eq(0)
                    with m.If(status != LinkStatus.ACK):
                        m.next = "REPLY-CRC"
                    with m.Else():
                        with m.Switch(reply_next):
                            for index, name in enumerate(exec_states):
                                with m.Case(index):
                                    m.next = name

            with m.State("EXEC-IDENTIFY"):
                reply_byte(identify_bytes[item_index])
                m.d.sync += item_index.eq(item_index + 1)
                with m.If(item_index == len(identify_bytes) - 1):
                    m.next = "REPLY-CRC"

            # WRITE_MEMORY: four bytes of a word, its request, its response; `count` times.
            with m.State("EXEC-WRITE-BYTES"):
                m.d.sync += [item_bits.eq(Cat(item_bits[8:], rx_byte)), byte_index.eq(byte_index + 1)]
                m.d.comb += rx_ptr_next.eq(rx_ptr + 1)
                with m.If(byte_index == 3):
                    m.d.sync += byte_index.eq(0)
                    m.next = "EXEC-WRITE-REQUEST"
            # Requests come from registers (a cycle to raise `valid`): no path from the state
            # decode into the chip.
            with m.State("EXEC-WRITE-REQUEST"):
                with m.If(~mem_valid):
                    m.d.sync += mem_valid.eq(1)
                with m.Elif(self.mem.ready):
                    m.d.sync += mem_valid.eq(0)
                    m.next = "EXEC-WRITE-RESPONSE"
            with m.State("EXEC-WRITE-RESPONSE"):
                m.d.comb += self.mem_resp.ready.eq(1)
                with m.If(self.mem_resp.valid):
                    m.d.sync += [words_left.eq(words_left - 1), mem_addr.eq(mem_addr + 1)]
                    with m.If(words_left == 1):
                        m.next = "REPLY-CRC"
                    with m.Else():
                        m.next = "EXEC-WRITE-BYTES"

            # READ_MEMORY: request, response, its four bytes into the reply; `count` times.
            with m.State("EXEC-READ-REQUEST"):
                with m.If(~mem_valid):
                    m.d.sync += mem_valid.eq(1)
                with m.Elif(self.mem.ready):
                    m.d.sync += mem_valid.eq(0)
                    m.next = "EXEC-READ-RESPONSE"
            with m.State("EXEC-READ-RESPONSE"):
                m.d.comb += self.mem_resp.ready.eq(1)
                with m.If(self.mem_resp.valid):
                    m.d.sync += [out_word.eq(self.mem_resp.payload), words_left.eq(words_left - 1),
                                 mem_addr.eq(mem_addr + 1),
                                 byte_index.eq(0)]
                    m.next = "EXEC-READ-BYTES"
            with m.State("EXEC-READ-BYTES"):
                reply_byte(out_word.word_select(byte_index[:2], 8))
                m.d.sync += byte_index.eq(byte_index + 1)
                with m.If(byte_index == 3):
                    m.d.sync += byte_index.eq(0)
                    with m.If(words_left == 0):
                        m.next = "REPLY-CRC"
                    with m.Else():
                        m.next = "EXEC-READ-REQUEST"

            # INJECT, execution pass.
            with m.State("EXEC-INJECT-BYTES"):
                with m.If(rx_ptr == payload_end):
                    m.next = "REPLY-CRC"
                with m.Else():
                    m.d.sync += [item_bits.eq(Cat(item_bits[8:], rx_byte)), byte_index.eq(byte_index + 1)]
                    m.d.comb += rx_ptr_next.eq(rx_ptr + 1)
                    with m.If(byte_index == LINK_INPUT_EVENT_BYTES - 1):
                        m.next = "EXEC-INJECT-PUSH"
            with m.State("EXEC-INJECT-PUSH"):
                m.d.comb += [
                    self.inject.valid.eq(1),
                    self.inject.payload.step.eq(event_step),
                    self.inject.payload.core.eq(event_core),
                    self.inject.payload.axon.eq(event_axon),
                ]
                with m.If(self.inject.ready):
                    m.d.sync += byte_index.eq(0)
                    m.next = "EXEC-INJECT-BYTES"

            with m.State("EXEC-RUN"):
                m.d.comb += [self.run.valid.eq(1), self.run.payload.eq(run_steps)]
                with m.If(self.run.ready):
                    m.next = "REPLY-CRC"

            # READ_OUTPUT: take the events the chip offers now, up to the requested maximum.
            with m.State("EXEC-OUTPUT-POLL"):
                with m.If((item_index == output_max) | ~self.out.valid):
                    m.next = "REPLY-CRC"
                with m.Else():
                    m.d.comb += self.out.ready.eq(1)
                    m.d.sync += [out_word.eq(self.out.payload.as_value()), item_index.eq(item_index + 1),
                                 byte_index.eq(0)]
                    m.next = "EXEC-OUTPUT-BYTES"
            with m.State("EXEC-OUTPUT-BYTES"):
                reply_byte(out_word.word_select(byte_index[:2], 8))
                m.d.sync += byte_index.eq(byte_index + 1)
                with m.If(byte_index == 3):
                    m.d.sync += byte_index.eq(0)
                    m.next = "EXEC-OUTPUT-POLL"

            # CRC-32 of the reply, little-endian; then the reply is sent.
            with m.State("REPLY-CRC"):
                m.d.comb += Assert(reply_ptr < Mux(reply_base == 0, NAK_BASE, REPLY_BUFFER_BYTES),
                                   "reply CRC overruns its part of the reply buffer")
                m.d.comb += [
                    reply_write.addr.eq(reply_ptr), reply_write.en.eq(1),
                    reply_write.data.eq(tx_crc.crc.word_select(byte_index[:2], 8)),
                ]
                m.d.sync += [reply_ptr.eq(reply_ptr + 1), byte_index.eq(byte_index + 1)]
                with m.If(byte_index == 3):
                    m.d.sync += [tx_ptr.eq(reply_base), tx_end.eq(reply_ptr + 1)]
                    with m.If(status == LinkStatus.ACK):
                        m.d.sync += [have_reply.eq(command != LinkCommand.RESET), last_seq.eq(seq),
                                     stored_end.eq(reply_ptr + 1)]
                    m.next = "TX-START"

            # COBS encoder: leading 0x00, blocks (scan up to 254 non-zero bytes, send their
            # length + 1, then the bytes), trailing 0x00.
            with m.State("TX-START"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(0)]
                m.d.sync += [block_start.eq(tx_ptr), block_len.eq(0)]
                with m.If(self.tx.ready):
                    m.next = "TX-SCAN"
            # The read address runs ahead every cycle, whatever the data, and the data is judged
            # one cycle later from registered flags: no path from the buffer's output to its
            # address or to the state. TX-CODE rewinds to the block start.
            with m.State("TX-SCAN"):
                m.d.comb += tx_ptr_next.eq(tx_ptr + 1)
                m.d.sync += [scan_primed.eq(1), scan_zero.eq(reply_read.data == 0), scan_end.eq(tx_ptr == tx_end)]
                with m.If(scan_primed):
                    with m.If((block_len == 254) | scan_end | scan_zero):
                        m.d.sync += [block_zero.eq((block_len != 254) & ~scan_end), scan_primed.eq(0)]
                        m.next = "TX-CODE"
                    with m.Else():
                        m.d.sync += block_len.eq(block_len + 1)
            with m.State("TX-CODE"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(block_len + 1),
                             tx_ptr_next.eq(block_start)]
                m.d.sync += block_left.eq(block_len)
                with m.If(self.tx.ready):
                    with m.If(block_len == 0):
                        m.next = "TX-NEXT"
                    with m.Else():
                        m.next = "TX-COPY"
            with m.State("TX-COPY"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(reply_read.data)]
                with m.If(self.tx.ready):
                    m.d.comb += tx_ptr_next.eq(tx_ptr + 1)
                    m.d.sync += block_left.eq(block_left - 1)
                    with m.If(block_left == 1):
                        m.next = "TX-NEXT"
            with m.State("TX-NEXT"):
                m.d.sync += block_len.eq(0)
                with m.If(block_zero):
                    m.d.comb += tx_ptr_next.eq(tx_ptr + 1)
                    m.d.sync += block_start.eq(tx_ptr + 1)
                    m.next = "TX-SCAN"
                with m.Elif(tx_ptr == tx_end):
                    m.next = "TX-END"
                with m.Else():
                    m.d.sync += block_start.eq(tx_ptr)
                    m.next = "TX-SCAN"
            with m.State("TX-END"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(0)]
                with m.If(self.tx.ready):
                    rx_reset()
                    m.next = "RECEIVE"

        return m
