"""Host-side codec of the host link (neurofabric.host.link): COBS, CRC, frames, requests,
reply parsing, and LinkBackend's validation (nothing is sent for a bad call)."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.lib.crc import catalog
from hypothesis import given, settings
from hypothesis import strategies as st

from neurofabric.hdl.link import identify_payload
from neurofabric.hdl.protocol import (
    LINK_FEATURE_ENCODER,
    LINK_FEATURE_LEARNING,
    LINK_MAX_INJECT_EVENTS,
    LINK_MAX_PAYLOAD,
    LINK_MAX_WRITE_WORDS,
    LINK_VERSION,
    EventKind,
    LinkCommand,
    LinkStatus,
    MemorySpace,
)
from neurofabric.host.backend import ChipInfo
from neurofabric.host.link import (
    CobsError,
    FrameReader,
    LinkBackend,
    LinkError,
    LinkNak,
    build_frame,
    cobs_decode,
    cobs_encode,
    crc32,
    inject_request,
    parse_body,
    parse_events,
    parse_identify,
    read_output_request,
    read_request,
    run_request,
    words_to_signed,
    write_request,
)
from neurofabric.host.model import ChipShape
from neurofabric.host.transport import FaultInjector, SerialTransport, Transport, TransportError

# Published COBS examples (Cheshire & Baker; the Wikipedia article's table), without delimiters.
COBS_VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("data, encoded", COBS_VECTORS)
def test_cobs_known_vectors(data, encoded):
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), st.just(b"\x00" * 3), st.just(b"\x07" * 300)),
                max_size=4).map(b"".join))
def test_cobs_round_trip(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(encoded) == data


def test_cobs_rejects_truncated_and_zero():
    with pytest.raises(CobsError, match="needs 4 bytes"):
        cobs_decode(b"\x05\x11\x22")
    with pytest.raises(CobsError, match="zero byte"):
        cobs_decode(b"\x03\x11\x00")


def test_crc32_is_the_ieee_crc_of_the_gateware():
    assert crc32(b"123456789") == 0xCBF43926             # the published check value
    rng = random.Random(5)
    for _ in range(20):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert crc32(data) == catalog.CRC32_ISO_HDLC(data_width=8).compute(data)


def test_frame_round_trip_and_damage():
    frame = build_frame(200, LinkCommand.RUN, b"\x01\x02\x00\x00")
    assert frame[0] == 0 and frame[-1] == 0 and 0 not in frame[1:-1]
    (body,) = FrameReader().feed(frame)
    reply = parse_body(body)
    assert (reply.seq, reply.status.value, reply.payload) == (200, LinkCommand.RUN.value, b"\x01\x02\x00\x00")
    for i in range(len(body)):
        for bit in range(8):
            damaged = bytearray(body)
            damaged[i] ^= 1 << bit
            assert parse_body(bytes(damaged)) is None
    assert parse_body(body[:-1]) is None and parse_body(body + b"\x00") is None


def test_frame_reader_splits_and_drops_garbage():
    reader = FrameReader()
    frames = [build_frame(i, LinkStatus.ACK, bytes([i] * i)) for i in range(1, 6)]
    stream = b"".join(frames)
    bodies = []
    for i in range(0, len(stream), 3):
        bodies += reader.feed(stream[i:i + 3])
    assert [parse_body(b).seq for b in bodies] == [1, 2, 3, 4, 5]
    assert reader.feed(b"\x00\x09\x01\x00") == [] and reader.dropped == 1


def test_requests_validate_fields():
    with pytest.raises(ValueError, match=r"core = 3 is out of range: allowed \[0, 1\]"):
        write_request(MemorySpace.WEIGHT, 3, 0, [1], cores=2)
    too_many = LINK_MAX_WRITE_WORDS + 1
    with pytest.raises(ValueError, match=rf"count = {too_many} is out of range: allowed \[0, {LINK_MAX_WRITE_WORDS}\]"):
        write_request(MemorySpace.WEIGHT, 0, 0, [0] * too_many)
    with pytest.raises(ValueError, match=r"words contains 4294967296"):
        write_request(MemorySpace.WEIGHT, 0, 0, [1 << 32])
    with pytest.raises(ValueError, match=f"space = {len(MemorySpace)} is not a MemorySpace"):
        read_request(len(MemorySpace), 0, 0, 1)
    with pytest.raises(ValueError, match=r"addr \+ count = 16777217"):
        read_request(MemorySpace.STATE, 0, (1 << 24) - 1, 2)
    with pytest.raises(ValueError, match=r"axon contains 64, out of range: allowed \[0, 63\]"):
        inject_request([[0, 0, 64]], cores=1, axons=64)
    with pytest.raises(ValueError, match="number of events"):
        inject_request([[0, 0, 0]] * (LINK_MAX_INJECT_EVENTS + 1))
    with pytest.raises(ValueError, match="steps = -1"):
        run_request(-1)
    with pytest.raises(ValueError, match=r"max_events = 257 is out of range"):
        read_output_request(257)
    code, payload = write_request(MemorySpace.WEIGHT, 1, 0x123456, [-1, 7])
    assert code == LinkCommand.WRITE_MEMORY
    assert payload == bytes([0, 1, 2, 0, 0x56, 0x34, 0x12, 0]) + b"\xff\xff\xff\xff\x07\x00\x00\x00"
    assert inject_request([[0x12345, 1, 0x203]])[1] == bytes([0x45, 0x23, 1, 0x03, 0x02])


def test_reply_parsers():
    shape = ChipShape(cores=3, neurons=512, axons=100, lanes=8, route_entries=2000)
    info, max_payload = parse_identify(identify_payload(shape, 42), build="x")
    assert info == ChipInfo(version=LINK_VERSION, cores=3, neurons=512, axons=100, lanes=8, route_entries=2000,
                            input_queue=42, build="x")
    assert max_payload == LINK_MAX_PAYLOAD
    # the build name and feature bits come from the chip unless the host overrides the name
    payload = identify_payload(shape, 42, features=LINK_FEATURE_LEARNING, build_name="icebreaker-up5k")
    assert len(payload) == 42
    assert payload[22:26] == b"\x01\x00\x00\x00" and payload[26:] == b"icebreaker-up5k\0"
    info, _ = parse_identify(payload)
    assert info.build == "icebreaker-up5k" and info.learning
    info, _ = parse_identify(identify_payload(shape, 42, build_name="a" * 16))
    assert info.build == "a" * 16 and not info.learning
    assert parse_identify(identify_payload(shape, 42, build_name=""))[0].build == ""
    for bad, message in [("x" * 17, "has 17 bytes"), ("s\u00efm", "printable ASCII"), ("a\nb", "printable ASCII"),
                         (b"sim", "must be a str")]:
        with pytest.raises(ValueError, match=message):
            identify_payload(shape, 42, build_name=bad)
    with pytest.raises(ValueError, match="features = 65536"):
        identify_payload(shape, 42, features=1 << 16)
    with pytest.raises(LinkError, match="expected 42"):
        parse_identify(payload[:26])
    with pytest.raises(LinkError, match="not printable ASCII"):
        parse_identify(payload[:26] + b"\xffbad".ljust(16, b"\0"))
    # the encoder: its feature bit and channel count
    payload = identify_payload(shape, 42, features=LINK_FEATURE_LEARNING, encoder_channels=300)
    assert payload[22:26] == bytes([LINK_FEATURE_LEARNING | LINK_FEATURE_ENCODER, 0, 300 & 0xFF, 300 >> 8])
    info, _ = parse_identify(payload)
    assert info.encoder_channels == 300 and info.learning
    assert parse_identify(identify_payload(shape, 42))[0].encoder_channels == 0
    for bad in (-1, 4097, 1.5):
        with pytest.raises(ValueError, match="encoder_channels"):
            identify_payload(shape, 42, encoder_channels=bad)
    with pytest.raises(ValueError, match="LINK_FEATURE_ENCODER"):
        identify_payload(shape, 42, features=LINK_FEATURE_ENCODER)
    events = parse_events(((1 << 30) | (2 << 16) | 9).to_bytes(4, "little") + ((2 << 30) | 0xFFFF).to_bytes(4, "little"))
    assert [(e.kind, e.core, e.index) for e in events] == [(EventKind.SPIKE, 2, 9), (EventKind.STEP, 0, 0xFFFF)]
    words = np.array([0xFFFFFFFF, 5, 0x80000000], dtype=np.uint32)
    assert words_to_signed(words, MemorySpace.WEIGHT).tolist() == [-1, 5, -(1 << 31)]
    assert words_to_signed(words, MemorySpace.COUNTER).tolist() == [0xFFFFFFFF, 5, 0x80000000]


def test_worked_examples_in_protocol_doc():
    """Every 'wire' line of docs/protocol.md section 5 decodes to its 'body' line with a good CRC."""
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = text[text.index("## 5. Worked examples"):text.index("## 6.")]
    wires = re.findall(r"wire ((?:[0-9a-f]{2} )+[0-9a-f]{2})", section)
    assert len(wires) >= 10
    for wire in wires:
        raw = bytes.fromhex(wire)
        (body,) = FrameReader().feed(raw)
        assert parse_body(body) is not None, wire
        assert build_frame(body[0], body[1], body[2:-4]) == raw


# --- LinkBackend against a scripted responder -------------------------------------------------------
class ScriptedLink(Transport):
    """Answers every request frame with an ACK (IDENTIFY with a fixed shape); records bytes."""

    def __init__(self):
        self.shape = ChipShape(cores=2, neurons=32, axons=48, lanes=8, route_entries=64)
        self.sent = bytearray()
        self.pending = bytearray()
        self.reader = FrameReader()
        self.answer = {}

    def write(self, data):
        self.sent += data
        for body in self.reader.feed(data):
            request = parse_body(body)
            if request is None:
                continue
            command = LinkCommand(body[1])
            if command == LinkCommand.IDENTIFY:
                payload = identify_payload(self.shape, 8)
            elif command == LinkCommand.READ_MEMORY:
                payload = bytes(4 * int.from_bytes(request.payload[2:4], "little"))
            elif command == LinkCommand.READ_OUTPUT:
                payload = ((2 << 30) | self.answer.setdefault("step", 0)).to_bytes(4, "little")
                self.answer["step"] += 1
            else:
                payload = b""
            status = self.answer.get(command, LinkStatus.ACK)
            self.pending += build_frame(request.seq, status, payload if status == LinkStatus.ACK else b"")

    def read(self, timeout):
        data, self.pending = bytes(self.pending), bytearray()
        return data

    def close(self):
        pass


def test_backend_rejects_bad_calls_before_sending():
    link = ScriptedLink()
    backend = LinkBackend(link)
    assert backend.identify().axons == 48
    before = len(link.sent)
    bad_calls = [
        (lambda: backend.write(MemorySpace.WEIGHT, 2, 0, [1]), r"core = 2 is out of range: allowed \[0, 1\]"),
        (lambda: backend.write("WEIGHT", 0, 0, [1]), "space = 'WEIGHT' is not a MemorySpace"),
        (lambda: backend.write(MemorySpace.WEIGHT, 0, -1, [1]), r"addr = -1 is out of range"),
        (lambda: backend.write(MemorySpace.WEIGHT, 0, 0, [1.5]), "must hold integers"),
        (lambda: backend.write(MemorySpace.WEIGHT, 0, 0, [[1, 2]]), "1-D"),
        (lambda: backend.write(MemorySpace.WEIGHT, 0, 0, [0, -(1 << 31) - 1]), r"words contains -2147483649"),
            (lambda: backend.write(MemorySpace.WEIGHT, 0, (1 << 24) - 300, [0] * 301), r"addr = 16776916 is out of range"),
            (lambda: backend.write(MemorySpace.WEIGHT, 0, 0, [200]), r"weight = 200 is out of range: allowed \[-128, 127\]"),
        (lambda: backend.read(MemorySpace.STATE, 0, 0, -2), r"count = -2 is out of range"),
        (lambda: backend.read(MemorySpace.STATE, 0, 0, 1.0), "count must be an integer"),
        (lambda: backend.inject([[0, 0, 48]]), r"events must have shape|axon contains 48"),
        (lambda: backend.inject(np.array([[0, 0, 48]])), r"axon contains 48, out of range: allowed \[0, 47\]"),
        (lambda: backend.inject(np.array([[0, 2, 0]])), r"core contains 2, out of range: allowed \[0, 1\]"),
        (lambda: backend.inject(np.array([[1, 0, 0], [0, 0, 0]])), "nondecreasing step order"),
        (lambda: backend.inject(np.array([[-1, 0, 0]])), r"step contains -1, out of range: allowed \[0, 32767\]"),
        (lambda: backend.inject(np.array([[0.0, 0, 0]])), "must hold integers"),
        (lambda: backend.inject(np.zeros((2, 2), dtype=int)), r"shape \(E, 3\)"),
        (lambda: backend.run(-1), r"steps = -1 is out of range"),
        (lambda: backend.run(True), "steps must be an integer"),
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()
        assert len(link.sent) == before, f"bytes were sent for a call that should fail: {message}"


def test_backend_chunks_and_naks():
    link = ScriptedLink()
    backend = LinkBackend(link)
    frames = backend.stats["frames"]
    backend.write(MemorySpace.WEIGHT, 1, 0, np.arange(2 * LINK_MAX_WRITE_WORDS + 1) % 256 - 128)
    assert backend.stats["frames"] - frames == 3
    assert backend.read(MemorySpace.WEIGHT, 0, 0, 600).shape == (600,)
    assert backend.run(3).shape == (0, 3)
    link.answer[LinkCommand.WRITE_MEMORY] = LinkStatus.BUSY
    with pytest.raises(LinkNak, match="WRITE_MEMORY rejected by the chip: BUSY"):
        backend.write(MemorySpace.WEIGHT, 0, 0, [1])
    link.answer[LinkCommand.RUN] = LinkStatus.BAD_CRC
    backend.retries = 2
    with pytest.raises(LinkError, match=r"RUN \(seq \d+\) failed after 3 attempts: NAK BAD_CRC"):
        backend.run(1)


def test_transport_errors():
    with pytest.raises(ValueError, match="url must be a non-empty string"):
        SerialTransport("")
    with pytest.raises(TransportError, match="cannot open"):
        SerialTransport("socket://127.0.0.1:1")
    loop = SerialTransport("loop://")
    loop.write(b"\x00abc\x00")
    assert loop.read(0.5) == b"\x00abc\x00"
    assert loop.read(0.01) == b""
    with pytest.raises(ValueError, match=r"flip = 2 is out of range"):
        FaultInjector(loop, random.Random(0), flip=2)
    loop.close()


def test_backend_refuses_to_overfill_the_input_queue():
    link = ScriptedLink()                               # reports an input queue of 8 events
    backend = LinkBackend(link)
    before = len(link.sent)
    with pytest.raises(ValueError, match=r"queued input events = 9 is out of range: .* \[0, 8\]"):
        backend.inject(np.array([[0, 0, 1]] * 9))
    assert len(link.sent) == before
    backend.inject(np.array([[0, 0, 1]] * 5 + [[2, 1, 3]] * 3))
    with pytest.raises(ValueError, match="queued input events = 9"):
        backend.inject(np.array([[3, 0, 0]]))
    backend.run(1)                                      # step 0 done: its 5 events left the queue
    backend.inject(np.array([[3, 0, 0]] * 5))


def test_backend_checks_step_markers():
    link = ScriptedLink()
    backend = LinkBackend(link)
    assert backend.run(2).shape == (0, 3)
    link.answer["step"] = 7                             # the chip skips markers 2..6
    with pytest.raises(LinkError, match="STEP marker 7 out of order: expected 2"):
        backend.run(1)


def test_link_backend_splits_writes_longer_than_a_frame_header_can_count():
    """70,000 words (more than a 16-bit count) go out as many full frames, nothing overflows."""
    from neurofabric.hdl.protocol import LINK_MAX_WRITE_WORDS, ChipShape, MemorySpace
    from neurofabric.host.link import LinkBackend

    sent = []
    backend = LinkBackend.__new__(LinkBackend)
    backend._cores = 1
    backend._shape = ChipShape(neurons=256, axons=512, lanes=8)       # 131072 weights
    backend.command = lambda command, payload: sent.append((command, payload)) or b""
    backend.write(MemorySpace.WEIGHT, 0, 0, [1] * 70_000)
    assert len(sent) == -(-70_000 // LINK_MAX_WRITE_WORDS)
    counts = [int.from_bytes(payload[2:4], "little") for _, payload in sent]
    assert sum(counts) == 70_000 and max(counts) == LINK_MAX_WRITE_WORDS


def test_identify_example_in_protocol_doc_is_the_sim_devices_reply():
    """The worked IDENTIFY reply of docs/protocol.md is what the default sim device sends."""
    from neurofabric.hdl.protocol import LINK_FEATURE_LEARNING
    from neurofabric.sim.device import DEFAULT_SHAPE

    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    example = text[text.index("IDENTIFY reply (version"):]
    body = bytes.fromhex(re.search(r"body ((?:[0-9a-f]{2} )+[0-9a-f]{2})", example).group(1))
    payload = identify_payload(DEFAULT_SHAPE, 64, features=LINK_FEATURE_LEARNING, encoder_channels=64)
    assert body[2:] == payload
