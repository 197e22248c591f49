"""The chip's memory map, declared once: every memory space, its size, its addresses and the
layout of every word, with the values each field allows.

Everything that reads or writes the chip's memories derives from :data:`MEMORY_MAP`: the
numpy model (``ChipModel.write_words`` / ``read_words``), the host compiler's packers, the
host link's validation (``neurofabric.host.link``), the gateware's word checker
(:class:`WordChecker`, used by the host link to refuse an out-of-range frame before a word
is written) and the tests. A new memory is one :class:`Space` entry (and its
``MemorySpace`` member).

A word is 32 bits (:data:`WORD_BITS`). Its :class:`Word` declaration is an amaranth
``data.StructLayout`` (bit 0 first) plus, for every field, the values it allows. Two kinds:

- a *value* word (:meth:`Word.value`) holds one number, sign-extended to 32 bits on reads and
  on the wire: a weight of -3 is ``0xFFFFFFFD`` (or -3 given as a Python int), a weight of 200
  is ``0x000000C8`` and out of range.
- a *packed* word (:meth:`Word.packed`) holds several bit fields; bits no field covers are
  reserved and must be zero.

One policy everywhere (docs/protocol.md, "Memory map"): a word with a field outside its
range, a write of a read-only word, a word of a feature the chip lacks, an address outside the
space, or a write breaking a rule between words (:class:`Order`) is **rejected**, never stored
truncated: the host raises :class:`MemoryMapError` before a byte is sent, the model raises it
(a subclass) and changes nothing, and the host link NAKs the whole frame ``OUT_OF_RANGE``
before writing any word of it.
"""

import functools
from dataclasses import dataclass

from amaranth.hdl import Array, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from neurofabric.hdl.protocol import (
    DECAY_ONE,
    ENCODER_RATE_ONE,
    LFSR_BITS,
    PROFILE_COUNT,
    REFRACTORY_BITS,
    STATE_BITS,
    STDP_SHIFT_MAX,
    TRACE_BITS,
    WEIGHT_BITS,
    WEIGHT_EXP_MAX,
    ChipRegister,
    CoreRegister,
    Counter,
    EncoderField,
    EncoderTarget,
    MemorySpace,
    ParameterError,
    ProfileField,
    RouteEntry,
    RouteKind,
    RoutePointer,
    StateField,
    StdpField,
    signed_range,
    unsigned_range,
)

__all__ = [
    "WORD_BITS", "ADDR_BITS", "MemoryMapError", "Field", "Word", "Block", "Order", "Space", "Location",
    "MEMORY_MAP", "TraceField", "to_word", "to_int32", "space_of", "size", "locate", "WordChecker",
]

WORD_BITS = 32      #: every memory word
ADDR_BITS = 24      #: MemRequest.addr

STATE = signed_range(STATE_BITS)
STATE_POSITIVE = (0, STATE[1])
WEIGHT = signed_range(WEIGHT_BITS)
DECAY = (0, DECAY_ONE)
TRACE = unsigned_range(TRACE_BITS)
BIT = (0, 1)


class MemoryMapError(ParameterError):
    """A memory access the chip refuses: ``field`` names what is wrong (a word's field,
    ``"addr"``, ``"core"``, ``"count"``, ``"space"``), ``value`` is the offending value and
    ``allowed`` the allowed range (an inclusive ``(lo, hi)`` pair, or ``None`` when nothing
    is allowed: a read-only word or a feature the chip lacks)."""

    def __init__(self, message, *, field, value, allowed, space=None, addr=None):
        super().__init__(message, field=field, value=value, allowed=allowed)
        self.space, self.addr = space, addr


def to_word(value):
    """`value` (an int in [-2**31, 2**32 - 1]) as the unsigned 32-bit word on the wire, or
    :class:`MemoryMapError`."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise MemoryMapError(f"word must be an integer in [{-(1 << 31)}, {(1 << 32) - 1}], not {value!r}",
                             field="word", value=value, allowed=(-(1 << 31), (1 << 32) - 1))
    value = int(value)
    if not -(1 << 31) <= value < (1 << 32):
        raise MemoryMapError(f"word = {value} is out of range: allowed [{-(1 << 31)}, {(1 << 32) - 1}]",
                             field="word", value=value, allowed=(-(1 << 31), (1 << 32) - 1))
    return value & ((1 << WORD_BITS) - 1)


def to_int32(word):
    """A 32-bit word (int or numpy array) read as a signed number."""
    word = word & ((1 << WORD_BITS) - 1)
    return word - ((word >> (WORD_BITS - 1)) << WORD_BITS)


def _field_value(word, offset, width, is_signed):
    bits = (word >> offset) & ((1 << width) - 1)
    return bits - ((bits >> (width - 1)) << width) if is_signed else bits


@dataclass(frozen=True)
class Field:
    """One field of a word: its shape (bits), the values it allows (an inclusive ``(lo, hi)``,
    or a function of the ``ChipShape`` returning one), the name errors use (`label`), and,
    optionally, other bounds while field ``when[0]`` holds value ``when[1]``: ``when[2]``."""
    shape: object
    allowed: object
    label: str = None
    when: tuple = None

    def bounds(self, chip):
        return self.allowed(chip) if callable(self.allowed) else self.allowed


@dataclass(frozen=True)
class Word:
    """The layout of one 32-bit memory word (see the module doc)."""
    name: str
    fields: dict                #: field name -> Field, bit 0 first
    extended: bool = False      #: a value word: one field, sign-extended to 32 bits
    read_only: bool = False     #: writes are refused
    requires: object = None     #: a function of the ChipShape: False refuses writes
    requires_text: str = ""     #: why, when `requires` refuses

    @classmethod
    def value(cls, name, allowed, **kwargs):
        """A word holding one number `name` in `allowed`, sign-extended to 32 bits (a range
        that needs all 32 bits unsigned, such as a counter's, is an unsigned word)."""
        shape = unsigned(WORD_BITS) if allowed[1] >= 1 << (WORD_BITS - 1) else signed(WORD_BITS)
        return cls(name, {name: Field(shape, allowed, label=name)}, extended=True, **kwargs)

    def _value_of(self, word):
        """A value word's number: the word read with the field's signedness."""
        (field,) = self.fields.values()
        return to_int32(word) if Shape.cast(field.shape).signed else word & ((1 << WORD_BITS) - 1)

    @classmethod
    def packed(cls, name, fields, **kwargs):
        return cls(name, dict(fields), **kwargs)

    @functools.cached_property
    def layout(self):
        """The word as an amaranth ``data.StructLayout`` (reserved bits as ``reserved``)."""
        members = {name: f.shape for name, f in self.fields.items()}
        used = sum(Shape.cast(s).width for s in members.values())
        if used < WORD_BITS:
            members["reserved"] = unsigned(WORD_BITS - used)
        return data.StructLayout(members)

    @functools.cached_property
    def items(self):
        """(name, offset, width, signed, Field) of every field in bit order, the reserved bits
        included (as a Field allowing only 0)."""
        out = []
        for name, member in self.layout:
            field = self.fields.get(name) or Field(member.shape, (0, 0), label=f"{self.name} bits "
                                                   f"{WORD_BITS - 1}..{member.offset}")
            shape = Shape.cast(member.shape)
            out.append((name, member.offset, shape.width, shape.signed, field))
        return tuple(out)

    def _values(self, word):
        """Every field's value (reserved included) of a word or an int64 array of words."""
        if self.extended:
            return {next(iter(self.fields)): self._value_of(word)}
        return {name: _field_value(word, offset, width, is_signed)
                for name, offset, width, is_signed, _ in self.items}

    def unpack(self, word):
        """{field: value} of a 32-bit word (an int or an int64 numpy array); a value word's
        field is the whole word read as a number."""
        values = self._values(word)
        values.pop("reserved", None)
        return values

    def pack(self, **values):
        """The 32-bit word (int, or int64 numpy array) of the given field values (missing
        fields are 0). Values are not checked: ``neurofabric.host.memory_map.check_write`` does."""
        if self.extended:
            (name,) = self.fields
            return values.get(name, 0) & ((1 << WORD_BITS) - 1)
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.name} has no field {sorted(unknown)[0]!r}: fields are {list(self.fields)}")
        word = 0
        for name, offset, width, _, _ in self.items:
            if name in values:
                word = word | ((values[name] & ((1 << width) - 1)) << offset)
        return word

    def first_error(self, chip, words):
        """(index, label, value, (lo, hi)) of the first word of the numpy int64 array `words`
        with a field out of range (its first such field), or None."""
        values = self._values(words)
        found = None
        for name, _, _, _, field in self.items:
            lo, hi = field.bounds(chip)
            if field.when is not None:
                other, match, (alt_lo, alt_hi) = field.when
                alternative = values[other] == match
                lo, hi = lo + (alt_lo - lo) * alternative, hi + (alt_hi - hi) * alternative
            else:
                lo, hi = lo + 0 * values[name], hi + 0 * values[name]
            bad = ((values[name] < lo) | (values[name] > hi)).nonzero()[0]
            if len(bad) and (found is None or bad[0] < found[0]):
                i = int(bad[0])
                found = (i, field.label or name, int(values[name][i]), (int(lo[i]), int(hi[i])))
        return found


class TraceField:
    """The two blocks of :data:`MemorySpace.TRACE` (there is no enum: they have different lengths)."""
    PRE = "pre_trace"       #: addresses 0 .. axons - 1
    POST = "post_trace"     #: addresses axons .. axons + neurons - 1


@dataclass(frozen=True)
class Block:
    """`rows(shape)` words of one layout, named `key` (an enum member or a name)."""
    key: object
    word: Word
    rows: object = 1        #: an int or a function of the ChipShape

    def count(self, chip):
        return self.rows(chip) if callable(self.rows) else self.rows


@dataclass(frozen=True)
class Order:
    """A rule between two words of a register space: value at `low` <= value at `high`. A
    write is checked on the values after it: the frame's words, and the stored words it does
    not write."""
    low: object
    high: object


@dataclass(frozen=True)
class Location:
    key: object             #: the block's key (e.g. a ProfileField, or "weight")
    row: int                #: the index within the block (profile, neuron, channel, ...)
    word: Word


@dataclass(frozen=True)
class Space:
    """One memory space. `blocks` are either *interleaved* (``addr = row * len(blocks) +
    block``: records such as profiles; a register file is one row of them) or concatenated
    (``addr`` runs through block 0, then block 1, ...). `chip_level`: one memory for the chip,
    the request's core is not used (but must exist)."""
    blocks: tuple
    interleaved: bool = False
    chip_level: bool = False
    rules: tuple = ()

    def size(self, chip):
        if self.interleaved:
            return len(self.blocks) * self.blocks[0].count(chip)
        return sum(b.count(chip) for b in self.blocks)

    def locate(self, chip, addr):
        if self.interleaved:
            block = self.blocks[addr % len(self.blocks)]
            return Location(block.key, addr // len(self.blocks), block.word)
        for block in self.blocks:
            if addr < block.count(chip):
                return Location(block.key, addr, block.word)
            addr -= block.count(chip)
        raise IndexError(addr)

    def split(self, chip, addr, offsets):
        """The words at ``addr + offsets`` (`offsets`: a numpy integer array, 0 .. count - 1)
        by block: a list of (Block, its offsets, their rows in the block)."""
        out = []
        if self.interleaved:
            stride = len(self.blocks)
            for index, block in enumerate(self.blocks):
                mine = offsets[(addr + offsets) % stride == index]
                out.append((block, mine, (addr + mine) // stride))
            return out
        start = 0
        for block in self.blocks:
            end = start + block.count(chip)
            mine = offsets[(addr + offsets >= start) & (addr + offsets < end)]
            out.append((block, mine, addr + mine - start))
            start = end
        return out

    def address(self, chip, key, row=0):
        """The address of row `row` of block `key`."""
        keys = [b.key for b in self.blocks]
        index = keys.index(key)
        if self.interleaved:
            return row * len(self.blocks) + index
        return sum(b.count(chip) for b in self.blocks[:index]) + row


def _records(words, rows=1):
    """`rows` records of one word per enum member, in member order (interleave them; a
    register file is one record)."""
    return tuple(Block(key, word, rows) for key, word in words.items())


def _encoder(chip):
    return chip.encoder_channels > 0


def _axons(chip):
    return 0, chip.axons - 1


def _cores(chip):
    return 0, chip.cores - 1


_ENCODER_REGISTER = dict(requires=_encoder, requires_text="this chip has no input encoder (encoder_channels = 0)")


def _fields_of(struct, fields):
    """Fields with the shapes of `struct`'s layout (hdl.protocol), in its bit order: `fields`
    maps each name to ``(allowed, label)`` or ``(allowed, label, when)``."""
    return {name: Field(member.shape, *fields[name]) for name, member in data.Layout.cast(struct)}

#: Every memory of the chip (docs/protocol.md, "Memory map").
MEMORY_MAP = {
    MemorySpace.WEIGHT: Space((Block("weight", Word.value("weight", WEIGHT),
                                     lambda chip: chip.axons * chip.neurons),)),
    MemorySpace.NEURON: Space((Block("neuron", Word.packed("neuron word", {
        "bias": Field(signed(STATE_BITS), STATE, label="bias"),
        "profile": Field(unsigned(3), (0, PROFILE_COUNT - 1), label="profile"),
    }), lambda chip: chip.neurons),)),
    MemorySpace.PROFILE: Space(_records({
        ProfileField.DU: Word.value("du", DECAY),
        ProfileField.DV: Word.value("dv", DECAY),
        ProfileField.THRESHOLD: Word.value("threshold", STATE_POSITIVE),
        ProfileField.V_RESET: Word.value("v_reset", STATE),
        ProfileField.RESET_MODE: Word.value("reset_mode", BIT),
        ProfileField.REFRACTORY: Word.value("refractory", unsigned_range(REFRACTORY_BITS)),
        ProfileField.THETA_PLUS: Word.value("theta_plus", STATE_POSITIVE),
        ProfileField.DTHETA: Word.value("dtheta", DECAY),
    }, PROFILE_COUNT), interleaved=True),
    MemorySpace.STATE: Space(_records({
        StateField.U: Word.value("state u", STATE),
        StateField.V: Word.value("state v", STATE),
        StateField.REFRACTORY: Word.value("state refractory", unsigned_range(REFRACTORY_BITS)),
        StateField.THETA: Word.value("state theta", STATE_POSITIVE),
    }, lambda chip: chip.neurons), interleaved=True),
    MemorySpace.CORE: Space(_records({
        CoreRegister.WEIGHT_EXP: Word.value("weight_exp", (0, WEIGHT_EXP_MAX)),
        CoreRegister.LEARNING: Word.value("learning", BIT),
    }), interleaved=True),
    MemorySpace.ROUTE_POINTER: Space((Block("route_pointer", Word.packed("route pointer", _fields_of(RoutePointer, {
        "base": (unsigned_range(16), "route pointer base"),
        "count": (unsigned_range(8), "route pointer count"),
    })), lambda chip: chip.cores * chip.neurons),), chip_level=True),
    # a HOST entry's axon and core are 0 (the router stores the kind alone)
    MemorySpace.ROUTE_ENTRY: Space((Block("route_entry", Word.packed("route entry", _fields_of(RouteEntry, {
        "axon": (_axons, "route destination axon", ("kind", RouteKind.HOST.value, (0, 0))),
        "core": (_cores, "route destination core", ("kind", RouteKind.HOST.value, (0, 0))),
        "chip": ((0, 0), "route entry chip"),
        "kind": (BIT, "route entry kind"),
    })), lambda chip: chip.route_entries),), chip_level=True),
    MemorySpace.STDP: Space(_records({
        StdpField.PRE_INCREMENT: Word.value("pre_increment", TRACE),
        StdpField.POST_INCREMENT: Word.value("post_increment", TRACE),
        StdpField.PRE_DECAY: Word.value("pre_decay", DECAY),
        StdpField.POST_DECAY: Word.value("post_decay", DECAY),
        StdpField.A_PLUS: Word.value("a_plus", TRACE),
        StdpField.A_MINUS: Word.value("a_minus", TRACE),
        StdpField.SHIFT: Word.value("shift", (0, STDP_SHIFT_MAX)),
        StdpField.W_MIN: Word.value("w_min", WEIGHT),
        StdpField.W_MAX: Word.value("w_max", WEIGHT),
        StdpField.SEED: Word.value("seed", unsigned_range(LFSR_BITS)),
        StdpField.REWARD: Word.value("reward", WEIGHT),
    }), interleaved=True, rules=(Order(StdpField.W_MIN, StdpField.W_MAX),)),
    MemorySpace.TRACE: Space((
        Block(TraceField.PRE, Word.value("trace", TRACE), lambda chip: chip.axons),
        Block(TraceField.POST, Word.value("trace", TRACE), lambda chip: chip.neurons),
    )),
    MemorySpace.PLASTIC: Space((Block("plastic", Word.value("plastic", BIT), lambda chip: chip.axons),)),
    MemorySpace.COUNTER: Space(_records({
        counter: Word.value(f"counter {counter.name.lower()}", unsigned_range(32), read_only=True)
        for counter in Counter}), interleaved=True, chip_level=True),
    MemorySpace.CHIP: Space(_records({
        ChipRegister.STEP: Word.value("step", unsigned_range(32), read_only=True),
        ChipRegister.LEARNING: Word.value("learning", BIT),
        ChipRegister.REWARD: Word.value("reward", WEIGHT),
        ChipRegister.ENCODER: Word.value("encoder register", (0, 3), **_ENCODER_REGISTER),
        ChipRegister.ENCODER_SEED: Word.value("encoder seed", unsigned_range(LFSR_BITS), **_ENCODER_REGISTER),
        ChipRegister.ENCODER_STEPS: Word.value("encoder steps", unsigned_range(16), **_ENCODER_REGISTER),
    }), interleaved=True, chip_level=True),
    MemorySpace.ENCODER: Space((
        Block(EncoderField.RATE, Word.value("encoder rate", (0, ENCODER_RATE_ONE)),
              lambda chip: chip.encoder_channels),
        Block(EncoderField.PHASE, Word.value("encoder phase", (0, ENCODER_RATE_ONE - 1)),
              lambda chip: chip.encoder_channels),
        Block(EncoderField.TARGET, Word.packed("encoder target", _fields_of(EncoderTarget, {
            "axon": (_axons, "encoder target axon"), "core": (_cores, "encoder target core"),
        })), lambda chip: chip.encoder_channels),
    ), chip_level=True),
}


# --- lookups (the checks of whole writes are neurofabric.host.memory_map's) ---------------------
def space_of(space):
    """`space` as a MemorySpace (a member or its number), or :class:`MemoryMapError`."""
    if isinstance(space, MemorySpace):
        return space
    try:
        return MemorySpace(space)
    except (ValueError, TypeError):
        names = ", ".join(s.name for s in MemorySpace)
        raise MemoryMapError(f"space = {space!r} is not a MemorySpace: allowed {names}", field="space",
                             value=space, allowed=(0, len(MemorySpace) - 1)) from None


def size(space, chip):
    """The number of words of `space` on a chip of ChipShape `chip`."""
    return MEMORY_MAP[space_of(space)].size(chip)


def locate(space, chip, addr):
    """The :class:`Location` (block key, row, word layout) of address `addr` of `space`."""
    return MEMORY_MAP[space_of(space)].locate(chip, addr)


# --- gateware ------------------------------------------------------------------------------------
class WordChecker(wiring.Component):
    """Combinational: ``ok`` is high when writing ``data`` to ``addr`` of ``space`` is allowed
    on a chip of `chip` (ChipShape): the address exists, the word is writable and every field
    of its layout is in range. Generated from :data:`MEMORY_MAP`, so it refuses exactly what
    :func:`neurofabric.host.memory_map.check_word` refuses. Rules between words (:class:`Order`) are the host link's."""

    space: In(MemorySpace)
    addr: In(ADDR_BITS)
    data: In(WORD_BITS)
    ok: Out(1)

    def __init__(self, chip, *, check_address=True):
        self.chip = chip
        self.check_address = check_address     #: False: the address is known to be in the space
        super().__init__()

    @staticmethod
    def _in_range(raw, is_signed, lo, hi):
        """`raw` (bits, read as signed if `is_signed`) in [lo, hi], with comparators only as wide
        as the bounds need (a range of whole bits is a check of the bits above it)."""
        width = len(raw)
        if lo >= 0:
            bits = max(1, hi.bit_length())
            ok = (raw[bits:] == 0) if width > bits else 1
            low = raw[:bits]
            if hi != (1 << bits) - 1:
                ok = ok & (low <= hi)
            if lo > 0:
                ok = ok & (low >= lo)
            return ok
        bits = max(hi.bit_length(), (-lo - 1).bit_length()) + 1
        if is_signed and lo == -(1 << (bits - 1)) and hi == (1 << (bits - 1)) - 1:
            top = raw[bits - 1:]            # a sign extension: all zeros or all ones
            return (top == 0) | (top == (1 << len(top)) - 1)
        value = raw.as_signed() if is_signed else raw
        return (value >= lo) & (value <= hi)

    def _word_ok(self, m, word_decl):
        chip = self.chip
        if word_decl.read_only or (word_decl.requires is not None and not word_decl.requires(chip)):
            return 0
        if word_decl.extended:
            (field,) = word_decl.fields.values()
            lo, hi = field.bounds(chip)
            return self._in_range(self.data, Shape.cast(field.shape).signed, lo, hi)
        bits = {name: self.data[offset:offset + width] for name, offset, width, _, _ in word_decl.items}
        ok = 1
        for name, _, _, is_signed, field in word_decl.items:
            in_range = self._in_range(bits[name], is_signed, *field.bounds(chip))
            if field.when is not None:
                other, match, (alt_lo, alt_hi) = field.when
                in_range = Mux(bits[other] == match, self._in_range(bits[name], is_signed, alt_lo, alt_hi), in_range)
            ok = ok & in_range
        return ok

    def elaborate(self, platform):
        m = Module()
        chip = self.chip
        # every space's verdict in parallel, then one multiplexer tree by space (no priority
        # chain through the spaces and blocks)
        verdicts = []
        for space in MemorySpace:
            decl = MEMORY_MAP[space]
            words = decl.size(chip)
            address_ok = (self.addr < words) if self.check_address else 1
            if decl.interleaved:
                stride = len(decl.blocks)
                if decl.blocks[0].count(chip) > 1:
                    assert stride & (stride - 1) == 0, f"{space.name}: interleave must be a power of two"
                block_oks = [self._word_ok(m, block.word) for block in decl.blocks]
                block_ok = Array(block_oks + [0] * ((1 << ceil_log2(stride)) - stride))[self.addr % (1 << ceil_log2(stride))] \
                    if stride > 1 else block_oks[0]
            elif all(block.word == decl.blocks[0].word for block in decl.blocks):
                block_ok = self._word_ok(m, decl.blocks[0].word)
            else:
                block_ok, start = self._word_ok(m, decl.blocks[0].word), 0
                for previous, block in zip(decl.blocks, decl.blocks[1:]):
                    start += previous.count(chip)
                    block_ok = Mux(self.addr >= start, self._word_ok(m, block.word), block_ok)
            verdict = Signal(name=f"{space.name.lower()}_ok")
            m.d.comb += verdict.eq(address_ok & block_ok)
            verdicts.append(verdict)
        m.d.comb += self.ok.eq(Array(verdicts + [Const(0)] * (16 - len(verdicts)))[self.space.as_value()])
        return m
