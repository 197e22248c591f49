"""Host side of the host link: COBS, CRC-32, frames, commands, and :class:`LinkBackend`.

The wire format is specified in docs/protocol.md; its constants, ``LinkCommand`` and
``LinkStatus`` live in ``neurofabric.hdl.protocol`` and are shared with the gateware
(``neurofabric.hdl.link``). This module is pure Python (plus numpy for arrays):

- :func:`cobs_encode` / :func:`cobs_decode`, :func:`crc32`;
- :func:`build_frame` / :func:`parse_body`, :class:`FrameReader` (splits a byte stream into
  frame bodies);
- request builders (``*_request``) and reply parsers (``parse_*``), each validating its fields;
- :class:`LinkBackend`: a :class:`~neurofabric.host.backend.Backend` over a byte transport
  (``neurofabric.host.transport``), with timeouts, retries that reuse the sequence number (the
  chip replays the stored reply, so nothing executes twice), chunking into frames, and
  validation of every argument before a byte is sent.
"""

import time
import zlib
from dataclasses import dataclass

import numpy as np

from neurofabric.hdl.memory_map import ADDR_BITS, MEMORY_MAP, space_of
from neurofabric.hdl.protocol import (
    CORE_BITS,
    INDEX_BITS,
    LINK_CRC_BYTES,
    LINK_EVENT_BYTES,
    LINK_FEATURE_ENCODER,
    LINK_FEATURE_LEARNING,
    LINK_HEADER_BYTES,
    LINK_IDENTIFY_BYTES,
    LINK_IDENTIFY_SHAPE_BYTES,
    LINK_MAX_INJECT_EVENTS,
    LINK_MAX_OUTPUT_EVENTS,
    LINK_MAX_PAYLOAD,
    LINK_MAX_READ_WORDS,
    LINK_MAX_WRITE_WORDS,
    ChipRegister,
    ChipShape,
    EventKind,
    LinkCommand,
    LinkStatus,
    MemorySpace,
)
from neurofabric.host.backend import Backend, BackendError, ChipInfo
from neurofabric.host.memory_map import check_access, check_write

__all__ = [
    "CobsError", "LinkError", "LinkNak", "cobs_encode", "cobs_decode", "crc32",
    "build_frame", "parse_body", "FrameReader", "Reply", "OutputEvent",
    "identify_request", "write_request", "read_request", "inject_request", "run_request",
    "read_output_request", "reset_request",
    "parse_identify", "parse_words", "parse_events", "words_to_signed",
    "LinkBackend", "LINK_ERRORS",
]

ADDR_LIMIT = 1 << ADDR_BITS     #: MemRequest.addr is 24 bits
WORD_MIN, WORD_MAX = -(1 << 31), (1 << 32) - 1
#: spaces whose words are all unsigned 32-bit numbers (the memory map says so); every other
#: space reads back sign-extended
UNSIGNED_SPACES = frozenset(space for space, decl in MEMORY_MAP.items()
                            if all(block.word.unpack(0xFFFFFFFF) == {block.word.name: 0xFFFFFFFF}
                                   for block in decl.blocks))
#: NAKs caused by a damaged frame: the request is resent with the same sequence number
LINK_ERRORS = frozenset({LinkStatus.BAD_CRC, LinkStatus.BAD_FRAMING, LinkStatus.TOO_LONG})


class CobsError(ValueError):
    """A byte string is not valid COBS."""


class LinkError(BackendError):
    """The link failed: no valid reply after all retries."""


class LinkNak(BackendError):
    """The chip rejected a command with a status other than a link error."""

    def __init__(self, command, status, message=""):
        self.command, self.status = command, status
        super().__init__(f"{command.name} rejected by the chip: {status.name}{message}")


# --- COBS and CRC --------------------------------------------------------------------------------
def cobs_encode(data):
    """COBS-encode `data` (no delimiters). Blocks hold up to 254 non-zero bytes; a block of
    254 that ends the data is not followed by an empty block (the gateware encodes the same)."""
    data = bytes(data)
    out = bytearray()
    start, end = 0, len(data)
    while True:
        stop = start
        while stop < end and data[stop] != 0 and stop - start < 254:
            stop += 1
        out.append(stop - start + 1)
        out += data[start:stop]
        if stop - start < 254 and stop < end:       # stopped at a zero: it is implied
            start = stop + 1
        elif stop >= end:
            return bytes(out)
        else:
            start = stop


def cobs_decode(data):
    """Decode one COBS block sequence (no delimiters); raise :class:`CobsError` if invalid."""
    data = bytes(data)
    out = bytearray()
    index = 0
    while index < len(data):
        code = data[index]
        if code == 0:
            raise CobsError(f"zero byte at offset {index} inside a COBS frame")
        if index + code > len(data):
            raise CobsError(f"block at offset {index} needs {code - 1} bytes, {len(data) - index - 1} left")
        block = data[index + 1:index + code]
        if 0 in block:
            raise CobsError(f"zero byte inside the block at offset {index}")
        out += block
        index += code
        if code != 0xFF and index < len(data):
            out.append(0)
    return bytes(out)


def crc32(data):
    """CRC-32 (IEEE 802.3, reflected, as zlib and ``amaranth.lib.crc.catalog.CRC32``)."""
    return zlib.crc32(bytes(data)) & 0xFFFFFFFF


# --- Frames --------------------------------------------------------------------------------------
def build_frame(seq, code, payload=b""):
    """A complete wire frame: 0x00, COBS(seq, code, payload, CRC-32 LE), 0x00."""
    _check_int("seq", seq, 0, 255)
    code = code.value if isinstance(code, (LinkCommand, LinkStatus)) else code
    _check_int("command", code, 0, 255)
    payload = bytes(payload)
    if len(payload) > LINK_MAX_PAYLOAD:
        raise ValueError(f"payload length = {len(payload)} is out of range: allowed [0, {LINK_MAX_PAYLOAD}]")
    body = bytes([seq, code]) + payload
    body += crc32(body).to_bytes(LINK_CRC_BYTES, "little")
    return b"\x00" + cobs_encode(body) + b"\x00"


@dataclass(frozen=True)
class Reply:
    """A parsed reply frame."""
    seq: int
    status: object          #: a LinkStatus, or the raw int if it is not one
    payload: bytes


def parse_body(body):
    """Parse a decoded frame body (seq, status, payload, CRC); None if too short or bad CRC."""
    if len(body) < LINK_HEADER_BYTES + LINK_CRC_BYTES:
        return None
    if crc32(body[:-LINK_CRC_BYTES]) != int.from_bytes(body[-LINK_CRC_BYTES:], "little"):
        return None
    try:
        status = LinkStatus(body[1])
    except ValueError:
        status = body[1]
    return Reply(body[0], status, bytes(body[LINK_HEADER_BYTES:-LINK_CRC_BYTES]))


class FrameReader:
    """Splits a byte stream at 0x00 delimiters into decoded frame bodies; bytes that are not
    valid COBS are dropped (and counted in :attr:`dropped`)."""

    def __init__(self):
        self._pending = bytearray()
        self.dropped = 0

    def feed(self, data):
        """Add received bytes; return the list of complete, COBS-valid frame bodies."""
        self._pending += data
        bodies = []
        while True:
            try:
                end = self._pending.index(0)
            except ValueError:
                break
            chunk = bytes(self._pending[:end])
            del self._pending[:end + 1]
            if not chunk:
                continue
            try:
                bodies.append(cobs_decode(chunk))
            except CobsError:
                self.dropped += 1
        if len(self._pending) > 4 * LINK_MAX_PAYLOAD:     # garbage with no delimiter
            self.dropped += 1
            self._pending.clear()
        return bodies


# --- Requests and replies ------------------------------------------------------------------------
def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} = {int(value)} is out of range: allowed [{lo}, {hi}]")
    return int(value)


def _check_space(space):
    return space_of(space)


def _check_mem_range(space, core, addr, count, cores):
    """Validate a memory access of any length (it may span many frames); returns the space."""
    space = _check_space(space)
    _check_int("core", core, 0, cores - 1)
    _check_int("addr", addr, 0, ADDR_LIMIT - 1)
    if addr + count > ADDR_LIMIT:
        raise ValueError(f"addr + count = {addr + count} is out of range: the last word must be "
                         f"below 2**24 = {ADDR_LIMIT}")
    return space


def _mem_header(space, core, addr, count, cores):
    """The header of one WRITE_MEMORY / READ_MEMORY frame (count fits one frame)."""
    space = _check_mem_range(space, core, addr, count, cores)
    return (bytes([space.value, int(core)]) + int(count).to_bytes(2, "little")
            + int(addr).to_bytes(4, "little"))


def identify_request():
    return LinkCommand.IDENTIFY, b""


def reset_request():
    return LinkCommand.RESET, b""


def write_request(space, core, addr, words, *, cores=255):
    """WRITE_MEMORY of up to :data:`LINK_MAX_WRITE_WORDS` words (ints in [-2**31, 2**32 - 1])."""
    words = _check_words(words)
    _check_int("count", len(words), 0, LINK_MAX_WRITE_WORDS)
    header = _mem_header(space, core, addr, len(words), cores)
    return LinkCommand.WRITE_MEMORY, header + (words & 0xFFFFFFFF).astype("<u4").tobytes()


def read_request(space, core, addr, count, *, cores=255):
    """READ_MEMORY of up to :data:`LINK_MAX_READ_WORDS` words."""
    _check_int("count", count, 0, LINK_MAX_READ_WORDS)
    return LinkCommand.READ_MEMORY, _mem_header(space, core, addr, count, cores)


def inject_request(events, *, cores=255, axons=1 << INDEX_BITS):
    """INJECT of up to :data:`LINK_MAX_INJECT_EVENTS` (step, core, axon) rows; `step` is sent
    modulo 2**16."""
    events = np.asarray(events, dtype=np.int64).reshape(-1, 3)
    _check_int("number of events", len(events), 0, LINK_MAX_INJECT_EVENTS)
    _check_column("core", events[:, 1], 0, cores - 1)
    _check_column("axon", events[:, 2], 0, axons - 1)
    record = np.zeros(len(events), dtype=[("step", "<u2"), ("core", "u1"), ("axon", "<u2")])
    record["step"] = events[:, 0] & 0xFFFF
    record["core"] = events[:, 1]
    record["axon"] = events[:, 2]
    return LinkCommand.INJECT, record.tobytes()


def run_request(steps):
    _check_int("steps", steps, 0, (1 << 32) - 1)
    return LinkCommand.RUN, int(steps).to_bytes(4, "little")


def read_output_request(max_events=LINK_MAX_OUTPUT_EVENTS):
    _check_int("max_events", max_events, 0, LINK_MAX_OUTPUT_EVENTS)
    return LinkCommand.READ_OUTPUT, int(max_events).to_bytes(2, "little")


def parse_identify(payload, build=None):
    """The IDENTIFY reply as a :class:`ChipInfo` (and the chip's maximum payload). The build
    name is the chip's own unless `build` overrides it."""
    if len(payload) != LINK_IDENTIFY_BYTES:
        raise LinkError(f"IDENTIFY reply has {len(payload)} bytes, expected {LINK_IDENTIFY_BYTES}")
    fields = np.frombuffer(payload[:LINK_IDENTIFY_SHAPE_BYTES], dtype=[
        ("version", "<u2"), ("cores", "<u2"), ("neurons", "<u4"), ("axons", "<u4"), ("lanes", "<u2"),
        ("route_entries", "<u4"), ("input_queue", "<u2"), ("max_payload", "<u2"), ("features", "<u2"),
        ("encoder_channels", "<u2")])[0]
    name = bytes(payload[LINK_IDENTIFY_SHAPE_BYTES:]).rstrip(b"\0")
    if not (name.isascii() and name.decode("ascii").isprintable() and b"\0" not in name):
        raise LinkError(f"IDENTIFY build name {name!r} is not printable ASCII")
    info = ChipInfo(version=int(fields["version"]), cores=int(fields["cores"]),
                    neurons=int(fields["neurons"]), axons=int(fields["axons"]),
                    lanes=int(fields["lanes"]), route_entries=int(fields["route_entries"]),
                    input_queue=int(fields["input_queue"]),
                    build=name.decode("ascii") if build is None else build,
                    learning=bool(int(fields["features"]) & LINK_FEATURE_LEARNING),
                    encoder_channels=int(fields["encoder_channels"])
                    if int(fields["features"]) & LINK_FEATURE_ENCODER else 0)
    return info, int(fields["max_payload"])


def words_to_signed(words, space):
    """uint32 words as int64: sign-extended, except in :data:`UNSIGNED_SPACES`."""
    words = np.asarray(words, dtype=np.uint32)
    if _check_space(space) in UNSIGNED_SPACES:
        return words.astype(np.int64)
    return words.view(np.int32).astype(np.int64)


def parse_words(payload, count):
    if len(payload) != 4 * count:
        raise LinkError(f"READ_MEMORY reply has {len(payload)} bytes, expected {4 * count}")
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


@dataclass(frozen=True)
class OutputEvent:
    """One event of the chip's output stream."""
    kind: EventKind
    core: int
    index: int


def parse_events(payload):
    """READ_OUTPUT reply payload -> list of :class:`OutputEvent`."""
    if len(payload) % LINK_EVENT_BYTES:
        raise LinkError(f"READ_OUTPUT reply has {len(payload)} bytes, not a multiple of {LINK_EVENT_BYTES}")
    events = []
    for (bits,) in np.frombuffer(payload, dtype=[("bits", "<u4")]):
        bits = int(bits)
        index = bits & ((1 << INDEX_BITS) - 1)
        core = (bits >> INDEX_BITS) & ((1 << CORE_BITS) - 1)
        kind = (bits >> 30) & 3
        try:
            kind = EventKind(kind)
        except ValueError:
            raise LinkError(f"output event 0x{bits:08x} has unknown kind {kind}") from None
        events.append(OutputEvent(kind, core, index))
    return events


def _check_words(words):
    array = np.asarray(words)
    if array.ndim != 1:
        raise ValueError(f"words must be a 1-D sequence of integers, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise ValueError(f"words must hold integers in [{WORD_MIN}, {WORD_MAX}], got dtype {array.dtype}")
    _check_column("words", array, WORD_MIN, WORD_MAX)
    return array.astype(np.int64)


def _check_column(name, values, lo, hi):
    values = np.asarray(values)
    if values.size and (values.min() < lo or values.max() > hi):
        bad = values[(values < lo) | (values > hi)].flat[0]
        raise ValueError(f"{name} contains {int(bad)}, out of range: allowed [{lo}, {hi}]")


# --- The backend ---------------------------------------------------------------------------------
class LinkBackend(Backend):
    """A chip behind the host link, over a byte transport (``neurofabric.host.transport``).

    Every request waits for its reply (stop-and-wait). A missing reply (``timeout`` seconds),
    a reply that fails its CRC, or a link-error NAK (``LINK_ERRORS``) resends the *same* frame;
    the chip recognises the repeated sequence number and replays its stored reply, so a command
    never executes twice. After ``retries`` resends :class:`LinkError` is raised. Any other NAK
    raises :class:`LinkNak`. On open, two RESETs (with different sequence numbers) clear the
    chip's replay state, IDENTIFY reads the chip's shape (used to validate arguments) and the
    chip's step register is read once (run() counts steps from it). ``identify().build`` and
    ``.learning`` are what the chip reports (its build name and ``LINK_FEATURE_LEARNING`` bit);
    `build`, if given, replaces the reported name.
    """

    def __init__(self, transport, *, timeout=1.0, retries=10, build=None, poll_interval=0.0):
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.poll_interval = poll_interval
        self._reader = FrameReader()
        self._seq = 0
        self._step = None               #: full step number of the next step to run
        self._queued = np.zeros(0, dtype=np.int64)      #: steps of the events injected so far
        self.stats = {"frames": 0, "retries": 0, "bytes_sent": 0, "bytes_received": 0}
        self._info = None
        self._cores = 255
        self._axons = 1 << INDEX_BITS
        for _ in range(2):
            self.command(*reset_request())
        self._info, self.max_payload = parse_identify(self.command(*identify_request()), build)
        self._cores, self._axons = self._info.cores, self._info.axons
        i = self._info
        self._shape = ChipShape(cores=i.cores, neurons=i.neurons, axons=i.axons, lanes=i.lanes,
                                route_entries=i.route_entries, encoder_channels=i.encoder_channels)
        self._step = int(self.read(MemorySpace.CHIP, 0, ChipRegister.STEP.value, 1)[0]) & 0xFFFFFFFF

    # --- one command ---
    def command(self, code, payload=b""):
        """Send one request (with retries); return the ACK payload."""
        self._seq = (self._seq + 1) & 0xFF
        frame = build_frame(self._seq, code, payload)
        self.stats["frames"] += 1
        last = "no reply"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
            self.transport.write(frame)
            self.stats["bytes_sent"] += len(frame)
            reply = self._await_reply(self._seq)
            if reply is None:
                last = f"no reply within {self.timeout} s"
                continue
            if reply.status == LinkStatus.ACK:
                return reply.payload
            if reply.status in LINK_ERRORS:
                last = f"NAK {reply.status.name}"
                continue
            status = reply.status if isinstance(reply.status, LinkStatus) else None
            if status is None:
                raise LinkError(f"{LinkCommand(code).name}: reply with unknown status {reply.status}")
            raise LinkNak(LinkCommand(code), status)
        raise LinkError(f"{LinkCommand(code).name} (seq {self._seq}) failed after "
                        f"{self.retries + 1} attempts: {last}")

    def _await_reply(self, seq):
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.transport.read(remaining)
            self.stats["bytes_received"] += len(data)
            for body in self._reader.feed(data):
                reply = parse_body(body)
                if reply is not None and reply.seq == seq:
                    return reply

    # --- Backend ---
    def identify(self):
        return self._info

    def write(self, space, core, addr, words):
        """Write `words` after checking every one against the memory map (MemoryMapError,
        nothing sent), the rule ``w_min <= w_max`` against the chip's stored word when the
        write holds only one of them (the chip checks the same)."""
        space = _check_space(space)
        words = _check_words(words)
        check_write(space, self._shape, core, addr, [int(w) for w in words],
                    stored=lambda at: int(self.read(space, core, at, 1)[0]))
        for start in range(0, len(words), LINK_MAX_WRITE_WORDS):
            chunk = words[start:start + LINK_MAX_WRITE_WORDS]
            self.command(*write_request(space, core, addr + start, chunk, cores=self._cores))

    def read(self, space, core, addr, count):
        space = check_access(space, self._shape, core, addr, count)
        parts = [np.zeros(0, dtype=np.uint32)]
        for start in range(0, count, LINK_MAX_READ_WORDS):
            n = min(LINK_MAX_READ_WORDS, count - start)
            payload = self.command(*read_request(space, core, addr + start, n, cores=self._cores))
            parts.append(parse_words(payload, n))
        return words_to_signed(np.concatenate(parts), space)

    def inject(self, events):
        """Send input events (see :meth:`Backend.inject`). At most ``identify().input_queue``
        events may wait for steps not yet run (if the chip reports a queue depth): more would
        stall the link until the chip runs, so they are refused with :class:`ValueError`."""
        events = np.asarray(events)
        if events.size == 0:
            return
        if events.ndim != 2 or events.shape[1] != 3:
            raise ValueError(f"events must have shape (E, 3) of (step, core, axon), got {events.shape}")
        if events.dtype.kind not in "iu":
            raise ValueError(f"events must hold integers, got dtype {events.dtype}")
        events = events.astype(np.int64)
        first = self._current_step()
        _check_column("step", events[:, 0], first, first + (1 << 15) - 1)
        if np.any(np.diff(events[:, 0]) < 0):
            raise ValueError("events must be in nondecreasing step order")
        _check_column("core", events[:, 1], 0, self._cores - 1)
        _check_column("axon", events[:, 2], 0, self._axons - 1)
        queued = self._queued[self._queued >= first]
        if self._info.input_queue and len(queued) + len(events) > self._info.input_queue:
            raise ValueError(
                f"number of queued input events = {len(queued) + len(events)} is out of range: the chip's "
                f"input queue holds [0, {self._info.input_queue}] events ahead of step {first}; run "
                f"steps between injects (the chip would stall the link otherwise)")
        self._queued = np.concatenate([queued, events[:, 0]])
        for start in range(0, len(events), LINK_MAX_INJECT_EVENTS):
            chunk = events[start:start + LINK_MAX_INJECT_EVENTS]
            self.command(*inject_request(chunk, cores=self._cores, axons=self._axons))

    def run(self, steps):
        _check_int("steps", steps, 0, (1 << 31) - 1)
        first = self._current_step()
        self.command(*run_request(steps))
        parts = [np.zeros((0, 3), dtype=np.int64)]
        step = first
        last = first + steps
        while step < last:
            payload = self.command(*read_output_request(LINK_MAX_OUTPUT_EVENTS))
            if len(payload) % LINK_EVENT_BYTES:
                raise LinkError(f"READ_OUTPUT reply has {len(payload)} bytes, not a multiple of {LINK_EVENT_BYTES}")
            if not payload:
                if self.poll_interval:
                    time.sleep(self.poll_interval)
                continue
            words = np.frombuffer(payload, dtype="<u4").astype(np.int64)
            kind = words >> 30
            index = words & ((1 << INDEX_BITS) - 1)
            core = (words >> INDEX_BITS) & ((1 << CORE_BITS) - 1)
            is_step = kind == EventKind.STEP.value
            bad = ~is_step & (kind != EventKind.SPIKE.value)
            if bad.any():
                raise LinkError(f"unexpected event 0x{int(words[bad][0]):08x} (kind {int(kind[bad][0])}) "
                                f"in the chip's output")
            markers = index[is_step]
            expected = (step + np.arange(len(markers))) & 0xFFFF
            if not np.array_equal(markers, expected):
                at = int(np.flatnonzero(markers != expected)[0])
                raise LinkError(f"STEP marker {int(markers[at])} out of order: expected {int(expected[at])}")
            step_of = step + np.cumsum(is_step) - is_step
            spike = ~is_step
            parts.append(np.stack([step_of[spike], core[spike], index[spike]], axis=1))
            step += len(markers)
        self._step = step
        return np.concatenate(parts)

    def _current_step(self):
        return self._step

    def reset_link(self):
        """Send RESET: the chip forgets its stored reply."""
        self.command(*reset_request())

    def close(self):
        self.transport.close()
