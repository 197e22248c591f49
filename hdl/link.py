"""The host link: COBS/CRC-32 framed commands over a byte stream, executed against the chip.

:class:`HostLink` sits between a byte stream (UART PHY on boards, a socket in the sim device)
and the chip's ``mem``/``inject``/``run``/``out`` streams. The wire format, every command and
every status code are specified in docs/protocol.md and ``neurofabric.hdl.protocol``
(``LinkCommand``, ``LinkStatus``, ``LINK_*``). It is three components:

- framing (``neurofabric.hdl.link_framing``): :class:`FrameReceiver` decodes COBS into a
  receive buffer while a CRC-32 checks it; :class:`FrameTransmitter` COBS-encodes replies;
- command execution (``neurofabric.hdl.link_command``): :class:`CommandExecutor` validates a
  whole frame (memory words against the memory map, injected events against the input queue's
  room) before the chip sees anything, then runs it;
- replies and replay (``neurofabric.hdl.link_reply``): :class:`ReplyBuilder` builds replies
  with their CRC and keeps the last ACK for a repeated seq.

While a frame is executed or a reply is sent, ``rx.ready`` is low: the protocol is
stop-and-wait, so a well-behaved host never sends then.
"""

from dataclasses import replace

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.link_command import INPUT_FREE_BITS, CommandExecutor
from neurofabric.hdl.link_framing import RX_BUFFER_BYTES, FrameReceiver
from neurofabric.hdl.link_reply import ReplyBuilder
from neurofabric.hdl.protocol import (
    ENCODER_CHANNELS_MAX,
    LINK_BUILD_NAME_BYTES,
    LINK_FEATURE_ENCODER,
    LINK_MAX_PAYLOAD,
    LINK_VERSION,
    Event,
    InputEvent,
    MemRequest,
)

__all__ = ["HostLink", "identify_payload", "check_build_name", "RX_BUFFER_BYTES"]


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
    ``out``, ``running`` and ``input_free`` (the entries free in the chip's input queue now) to
    the chip (see ``neurofabric.hdl.top``); ``idle`` is high while the link waits for bytes
    (nothing to execute or send; only the receive watchdog counts).
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
        self.encoder_channels = encoder_channels
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
            "input_free": In(INPUT_FREE_BITS),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = FrameReceiver(self.rx_timeout)
        # the memory map the executor checks is the one IDENTIFY reports (its encoder channels)
        shape = replace(self.shape, encoder_channels=self.encoder_channels)
        m.submodules.executor = executor = CommandExecutor(shape, self.identify_reply)
        m.submodules.replies = replies = ReplyBuilder()
        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, receiver.frame, executor.frame)
        wiring.connect(m, executor.buffer, receiver.buffer)
        wiring.connect(m, executor.reply, replies.reply)
        wiring.connect(m, replies.tx, wiring.flipped(self.tx))
        chip = executor.chip
        wiring.connect(m, chip.mem, wiring.flipped(self.mem))
        wiring.connect(m, wiring.flipped(self.mem_resp), chip.mem_resp)
        wiring.connect(m, chip.inject, wiring.flipped(self.inject))
        wiring.connect(m, chip.run, wiring.flipped(self.run))
        wiring.connect(m, wiring.flipped(self.out), chip.out)
        m.d.comb += [chip.running.eq(self.running), chip.input_free.eq(self.input_free),
                     self.idle.eq(receiver.idle)]
        return m
