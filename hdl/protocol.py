"""Formats shared by gateware, host library, simulation and cocotb benches.

Everything that crosses a boundary (AER events, route entries, numeric widths of the neuron
state and of the memories) is defined here once. The host imports this module (it needs only
amaranth's `data`/`enum`, no elaboration), so a field that changes here changes everywhere.

See docs/semantics.md for what the numbers mean and docs/protocol.md for the host link.
"""

from dataclasses import dataclass

from amaranth.lib import data, enum

__all__ = [
    "STATE_BITS", "WEIGHT_BITS", "ACC_BITS", "DECAY_BITS", "DECAY_ONE", "REFRACTORY_BITS",
    "PROFILE_COUNT", "PROFILE_BITS", "WEIGHT_EXP_MAX", "TRACE_BITS", "STDP_SHIFT_MAX",
    "LFSR_BITS", "LFSR_TAPS", "INDEX_BITS", "CORE_BITS", "CHIP_BITS",
    "EventKind", "Event", "RouteKind", "RouteEntry", "RoutePointer",
    "ResetMode", "signed_range", "unsigned_range", "ParameterError", "ChipShape",
    "MemorySpace", "ProfileField", "StateField", "CoreRegister", "StdpField", "MemRequest",
    "Counter", "ChipRegister", "InputEvent",
    "ENCODER_CHANNELS_MAX", "ENCODER_RATE_ONE", "ENCODER_RATE_BITS", "ENCODER_PHASE_BITS", "ENCODER_LFSR_STEPS",
    "ENCODER_LFSR_BITS", "ENCODER_LFSR_TAPS", "ENCODER_DRAW_BITS",
    "EncoderField", "EncoderMode", "EncoderTarget",
]

# --- Numeric widths of the neuron datapath (docs/semantics.md) -------------------------------
STATE_BITS = 24          #: u, v, bias, threshold, v_reset, theta: signed two's complement
WEIGHT_BITS = 8          #: synaptic weights: signed
ACC_BITS = STATE_BITS    #: per-step input accumulator (sum of raw weights): signed, saturating
DECAY_BITS = 12          #: decays du, dv, dtheta, trace decays are fractions of 2**DECAY_BITS
DECAY_ONE = 1 << DECAY_BITS
REFRACTORY_BITS = 8      #: refractory period, in time steps
PROFILE_COUNT = 8        #: neuron parameter profiles per core
PROFILE_BITS = 3
WEIGHT_EXP_MAX = 15      #: per-core weight exponent: input = acc << weight_exp
TRACE_BITS = 8           #: STDP pre/post traces: unsigned, saturating
STDP_SHIFT_MAX = 15      #: STDP amplitude shift
LFSR_BITS = 16           #: stochastic-rounding LFSR (Galois, taps below), one per lane
LFSR_TAPS = 0xB400       #: x^16 + x^14 + x^13 + x^11 + 1, maximal length

# --- AER address widths ------------------------------------------------------------------------
INDEX_BITS = 16          #: neuron or axon index inside a core
CORE_BITS = 8            #: core index inside a chip
CHIP_BITS = 6            #: reserved for multi-chip systems; always 0 on a single chip

# --- The on-chip input encoder (docs/semantics.md, "Input encoder") ----------------------------
ENCODER_CHANNELS_MAX = 4096     #: most encoder channels a chip can be built with
ENCODER_PHASE_BITS = 16         #: phase accumulator: unsigned, [0, 2**16)
ENCODER_RATE_ONE = 1 << ENCODER_PHASE_BITS  #: the rate that spikes every step
ENCODER_RATE_BITS = ENCODER_PHASE_BITS + 1  #: rate: unsigned, [0, ENCODER_RATE_ONE]
#: LFSR steps per Bernoulli draw: consecutive states of a shift register are correlated
#: (neighbouring channels' spikes would be, by ~0.5), 16 steps give 16 fresh bits
ENCODER_LFSR_STEPS = 16
#: The encoder's Galois LFSR: 32 bits, so that its 2**32 - 1 states last ~2**28 / E steps of E
#: channels (a 16-bit one repeated its draws every 65535 / (16 E) steps: 32 steps at E = 128)
ENCODER_LFSR_BITS = 32
ENCODER_LFSR_TAPS = 0x80200003  #: x^32 + x^22 + x^2 + x + 1, maximal length (tests check it)
#: Bits of a Bernoulli draw: the top ENCODER_DRAW_BITS of the LFSR state
ENCODER_DRAW_BITS = 16


def signed_range(bits):
    """The inclusive range of a `bits`-wide two's complement number."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def unsigned_range(bits):
    """The inclusive range of a `bits`-wide unsigned number."""
    return 0, (1 << bits) - 1


class ParameterError(ValueError):
    """A parameter outside its allowed range; the message names the field, value and range,
    and so do ``field``, ``value`` and ``allowed`` (an inclusive ``(lo, hi)``, or None) when
    the raiser gives them."""

    def __init__(self, message, *, field=None, value=None, allowed=None):
        super().__init__(message)
        self.field, self.value, self.allowed = field, value, allowed


def check_parameter(name, value, lo, hi):
    """`value` as an int if it is an integer in [lo, hi], else :class:`ParameterError`."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ParameterError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}",
                             field=name, value=value, allowed=(lo, hi))
    if not lo <= int(value) <= hi:
        raise ParameterError(f"{name} = {int(value)} is out of range: allowed [{lo}, {hi}]",
                             field=name, value=int(value), allowed=(lo, hi))
    return int(value)


@dataclass(frozen=True)
class ChipShape:
    """The build-time shape of a chip: `cores` cores of `neurons` neurons and `axons` axons,
    integrating `lanes` weights per cycle, with `route_entries` route table entries. Shared by
    the gateware (hdl.chip), the model, the host library, the sim device and the boards.

    It holds the hardware's rules, so the model refuses a shape the gateware cannot build:
    `lanes` a power of two dividing `neurons`, ``axons * neurons`` within the 24-bit WEIGHT
    address space (``cores * neurons``, the ROUTE_POINTER space, fits by the bounds below)."""
    cores: int = 1
    neurons: int = 256
    axons: int = 256
    lanes: int = 8
    route_entries: int = 1024
    encoder_channels: int = 0   #: on-chip input encoder channels (0: the chip has no encoder)

    def __post_init__(self):
        check_parameter("cores", self.cores, 1, 255)
        check_parameter("neurons", self.neurons, 1, 1 << 16)
        check_parameter("axons", self.axons, 1, 1 << 16)
        check_parameter("lanes", self.lanes, 1, 64)
        check_parameter("route_entries", self.route_entries, 1, 1 << 16)
        check_parameter("encoder_channels", self.encoder_channels, 0, ENCODER_CHANNELS_MAX)
        if self.lanes & (self.lanes - 1):
            raise ParameterError(f"lanes = {self.lanes} must be a power of two in [1, 64]", field="lanes",
                                 value=self.lanes, allowed=(1, 64))
        if self.neurons % self.lanes:
            raise ParameterError(f"lanes = {self.lanes} must divide neurons = {self.neurons}", field="lanes",
                                 value=self.lanes, allowed=(1, 64))
        if self.axons * self.neurons > 1 << 24:
            raise ParameterError(f"axons * neurons = {self.axons * self.neurons} is out of range: allowed "
                                 f"[1, {1 << 24}] (the WEIGHT address space)", field="axons * neurons",
                                 value=self.axons * self.neurons, allowed=(1, 1 << 24))


class ResetMode(enum.Enum, shape=1):
    """What a spike does to the membrane potential."""
    VALUE = 0       #: v := v_reset
    SUBTRACT = 1    #: v := v - (threshold + theta), saturating


class EventKind(enum.Enum, shape=2):
    """What an AER event means."""
    AXON = 0        #: deliver to axon `index` of core `core` (input to a core)
    SPIKE = 1       #: neuron `index` of core `core` fired (output of a core, or to the host)
    STEP = 2        #: end-of-step marker; `index` carries the low bits of the step number


class Event(data.Struct):
    """One address-event: 32 bits on every stream of the chip."""
    index: INDEX_BITS
    core: CORE_BITS
    chip: CHIP_BITS
    kind: EventKind


class RouteKind(enum.Enum, shape=1):
    """Where a route entry sends a spike."""
    AXON = 0        #: to axon `axon` of core `core`
    HOST = 1        #: to the host output stream (as a SPIKE event naming the source)


class RouteEntry(data.Struct):
    """One destination of a source neuron (entries of one neuron are contiguous)."""
    axon: INDEX_BITS
    core: CORE_BITS
    chip: CHIP_BITS
    kind: RouteKind


class RoutePointer(data.Struct):
    """Per source neuron: its route entries are `base .. base + count - 1`."""
    base: 16
    count: 8


# --- The memory map: every memory of the chip, as the host link and the model address it -------
class MemorySpace(enum.Enum, shape=4):
    """Which memory a :class:`MemRequest` addresses. Data words are 32 bits; every space's size,
    addresses and word layouts (with the range of every field) are declared in
    ``neurofabric.hdl.memory_map.MEMORY_MAP``: out-of-range words are rejected, never stored
    truncated (docs/protocol.md, "Memory map")."""
    WEIGHT = 0          #: addr = axon * neurons + neuron; data = int8 weight
    NEURON = 1          #: addr = neuron; data = bias[23:0] | profile index << 24
    PROFILE = 2         #: addr = profile * 8 + ProfileField; data = that field
    STATE = 3           #: addr = neuron * 4 + StateField; data = that state variable
    CORE = 4            #: addr = CoreRegister; per-core registers
    ROUTE_POINTER = 5   #: chip-level; addr = core * neurons + neuron; data = RoutePointer bits
    ROUTE_ENTRY = 6     #: chip-level; addr = entry index; data = RouteEntry bits
    STDP = 7            #: addr = StdpField; per-core learning parameters
    TRACE = 8           #: addr = axon (pre-trace) or axons + neuron (post-trace)
    PLASTIC = 9         #: addr = axon; data = 1 if that axon's synapses learn
    COUNTER = 10        #: chip-level, read-only; addr = Counter
    CHIP = 11           #: chip-level registers; addr = ChipRegister
    ENCODER = 12        #: chip-level; addr = EncoderField * encoder_channels + channel


class ProfileField(enum.Enum, shape=3):
    DU = 0
    DV = 1
    THRESHOLD = 2
    V_RESET = 3
    RESET_MODE = 4
    REFRACTORY = 5
    THETA_PLUS = 6
    DTHETA = 7


class StateField(enum.Enum, shape=2):
    U = 0
    V = 1
    REFRACTORY = 2
    THETA = 3


class CoreRegister(enum.Enum, shape=4):
    WEIGHT_EXP = 0      #: input = acc << WEIGHT_EXP
    LEARNING = 1        #: 1 = STDP enabled on this core


class StdpField(enum.Enum, shape=4):
    PRE_INCREMENT = 0
    POST_INCREMENT = 1
    PRE_DECAY = 2
    POST_DECAY = 3
    A_PLUS = 4
    A_MINUS = 5
    SHIFT = 6
    W_MIN = 7
    W_MAX = 8
    SEED = 9
    REWARD = 10


class Counter(enum.Enum, shape=4):
    """Chip-level event counters (32-bit, wrapping), readable through MemorySpace.COUNTER."""
    STEPS = 0           #: time steps completed
    INPUT_EVENTS = 1    #: host input events delivered to axons
    ROUTED_EVENTS = 2   #: spikes routed core -> axon
    SPIKES = 3          #: neurons that fired
    HOST_SPIKES = 4     #: spike events sent to the host output
    LATE_INPUTS = 5     #: input events tagged with a step already past: dropped, counted here
    OUTPUT_STALLS = 6   #: cycles the host output stream back-pressured the chip


class ChipRegister(enum.Enum, shape=4):
    STEP = 0            #: the current time step (the next to run), read-only
    LEARNING = 1        #: 1 = learning phase enabled (global)
    REWARD = 2          #: signed 8-bit third factor of STDP
    ENCODER = 3         #: input encoder: bit 0 = enable, bit 1 = EncoderMode (chips with an encoder)
    ENCODER_SEED = 4    #: input encoder LFSR seed, 16 bits; a write reloads the LFSR
    ENCODER_STEPS = 5   #: 16 bits: the encoder turns itself off after this many more steps (0: never)


class EncoderField(enum.Enum, shape=2):
    """The three blocks of :data:`MemorySpace.ENCODER`, each ``encoder_channels`` words long."""
    RATE = 0            #: [0, ENCODER_RATE_ONE]: phase increment, or Bernoulli threshold
    PHASE = 1           #: [0, 2**16): the phase accumulator (advanced by the chip in PHASE mode)
    TARGET = 2          #: EncoderTarget bits: the (core, axon) the channel's spikes go to


class EncoderMode(enum.Enum, shape=1):
    """How every encoder channel turns its rate into spikes (docs/semantics.md)."""
    PHASE = 0           #: deterministic: phase += rate; spike and phase -= 2**16 when it overflows
    BERNOULLI = 1       #: spike when the chip's LFSR, stepped 16 times per channel, is <= rate


class EncoderTarget(data.Struct):
    """An encoder channel's destination: axon `axon` of core `core` (bits 31..24 zero)."""
    axon: INDEX_BITS
    core: CORE_BITS


class InputEvent(data.Struct):
    """A host input event: deliver to (core, axon) in time step `step` (low 16 bits of it)."""
    axon: INDEX_BITS
    core: CORE_BITS
    step: 16


class MemRequest(data.Struct):
    """A read or write of one 32-bit word of one memory of one core (or of the router)."""
    addr: 24
    data: 32
    mem: MemorySpace
    core: CORE_BITS
    write: 1


# --- The host link (frames, commands, status codes): docs/protocol.md -----------------------
__all__ += [
    "LINK_VERSION", "LINK_MAX_PAYLOAD", "LINK_HEADER_BYTES", "LINK_CRC_BYTES", "LINK_MEM_HEADER_BYTES",
    "LINK_INPUT_EVENT_BYTES", "LINK_EVENT_BYTES", "LINK_MAX_WRITE_WORDS", "LINK_MAX_READ_WORDS",
    "LINK_MAX_INJECT_EVENTS", "LINK_MAX_OUTPUT_EVENTS", "LINK_IDENTIFY_SHAPE_BYTES", "LINK_BUILD_NAME_BYTES", "LINK_IDENTIFY_BYTES",
    "LINK_FEATURE_LEARNING", "LINK_FEATURE_ENCODER", "LinkCommand", "LinkStatus",
]

# Wire format (all multi-byte fields little-endian):
#   0x00, COBS(seq u8, command u8, payload..., CRC-32 u32 over seq..payload), 0x00
# A reply frame echoes `seq` and carries a LinkStatus byte where the command byte was.

LINK_VERSION = 4            #: identify reply `version`; bumped on any wire-format change
#: largest payload (bytes) of a request or a reply frame: the link's receive buffer (header,
#: payload, CRC) and reply buffer (a reply, then a NAK) fit 1024 bytes, two iCE40 block RAMs each
LINK_MAX_PAYLOAD = 1012
LINK_HEADER_BYTES = 2       #: seq + command (or status)
LINK_CRC_BYTES = 4          #: CRC-32 (IEEE 802.3, zlib.crc32), little-endian
LINK_MEM_HEADER_BYTES = 8   #: space u8, core u8, count u16, addr u32
LINK_INPUT_EVENT_BYTES = 5  #: step u16, core u8, axon u16
LINK_EVENT_BYTES = 4        #: one Event, its 32 bits little-endian
#: the most words one WRITE_MEMORY frame carries
LINK_MAX_WRITE_WORDS = (LINK_MAX_PAYLOAD - LINK_MEM_HEADER_BYTES) // 4
#: the most words one READ_MEMORY reply carries
LINK_MAX_READ_WORDS = LINK_MAX_PAYLOAD // 4
#: the most events one INJECT frame carries
LINK_MAX_INJECT_EVENTS = LINK_MAX_PAYLOAD // LINK_INPUT_EVENT_BYTES
#: the most events one READ_OUTPUT reply carries
LINK_MAX_OUTPUT_EVENTS = LINK_MAX_PAYLOAD // LINK_EVENT_BYTES
#: identify reply: version, shape, queue, payload limit, features, encoder channels
LINK_IDENTIFY_SHAPE_BYTES = 26
LINK_BUILD_NAME_BYTES = 16      #: identify reply: then the build name, ASCII, NUL-padded
LINK_IDENTIFY_BYTES = LINK_IDENTIFY_SHAPE_BYTES + LINK_BUILD_NAME_BYTES   #: the whole reply payload
LINK_FEATURE_LEARNING = 1 << 0  #: identify `features` bit: the cores learn on chip
LINK_FEATURE_ENCODER = 1 << 1   #: identify `features` bit: the chip has an input encoder


class LinkCommand(enum.Enum, shape=8):
    """The command byte of a request frame (payloads: docs/protocol.md)."""
    IDENTIFY = 0x01         #: no payload; reply: version and chip shape
    WRITE_MEMORY = 0x02     #: space, core, count, addr, count words; reply: empty
    READ_MEMORY = 0x03      #: space, core, count, addr; reply: count words
    INJECT = 0x04           #: InputEvent list; reply: empty
    RUN = 0x05              #: steps u32; reply: empty
    READ_OUTPUT = 0x06      #: max events u16; reply: up to that many Events
    RESET = 0x07            #: no payload; forgets the stored reply (sequence state)


class LinkStatus(enum.Enum, shape=8):
    """The status byte of a reply frame."""
    ACK = 0x00              #: executed; the payload is the command's result
    BAD_CRC = 0x01          #: CRC mismatch; seq echoed as received (it may be corrupt)
    BAD_FRAMING = 0x02      #: body shorter than seq + command + CRC
    TOO_LONG = 0x03         #: body longer than the receive buffer; rest discarded
    UNKNOWN_COMMAND = 0x04  #: command byte is not a LinkCommand
    BAD_LENGTH = 0x05       #: payload length does not match the command
    OUT_OF_RANGE = 0x06     #: a field (space, core, count, addr, axon, a memory word) is out of range
    BUSY = 0x07             #: the chip cannot take this command now (memory write while running)
    QUEUE_FULL = 0x08       #: INJECT with more events than the chip's input queue has room for now
