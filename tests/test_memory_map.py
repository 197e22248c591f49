"""The memory map declaration (neurofabric.hdl.memory_map): sizes, addresses, pack/unpack, the
host-side checks, and the gateware WordChecker refusing exactly what check_word refuses."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.memory_map import MEMORY_MAP, MemoryMapError, TraceField, WordChecker, locate, size
from neurofabric.hdl.protocol import (
    ChipRegister,
    ChipShape,
    EncoderField,
    MemorySpace,
    ParameterError,
    ProfileField,
    RouteEntry,
    RouteKind,
    StateField,
    StdpField,
)
from neurofabric.host.memory_map import check_word, check_write

SHAPE = ChipShape(cores=3, neurons=8, axons=4, lanes=2, route_entries=12, encoder_channels=5)


def test_sizes_and_locations_follow_the_shape():
    s = SHAPE
    assert size(MemorySpace.WEIGHT, s) == s.axons * s.neurons
    assert size(MemorySpace.STATE, s) == 4 * s.neurons
    assert size(MemorySpace.TRACE, s) == s.axons + s.neurons
    assert size(MemorySpace.ENCODER, s) == 3 * s.encoder_channels
    assert size(MemorySpace.ROUTE_POINTER, s) == s.cores * s.neurons
    assert locate(MemorySpace.PROFILE, s, 8 * 5 + 2).key is ProfileField.THRESHOLD
    assert locate(MemorySpace.PROFILE, s, 8 * 5 + 2).row == 5
    assert locate(MemorySpace.STATE, s, 4 * 7 + 1).key is StateField.V
    assert locate(MemorySpace.TRACE, s, s.axons).key == TraceField.POST
    assert locate(MemorySpace.TRACE, s, s.axons).row == 0
    at = locate(MemorySpace.ENCODER, s, 2 * s.encoder_channels + 3)
    assert (at.key, at.row) == (EncoderField.TARGET, 3)
    assert MEMORY_MAP[MemorySpace.STDP].address(s, StdpField.W_MAX) == StdpField.W_MAX.value


def test_pack_unpack_agree_with_the_protocol_structs():
    word = locate(MemorySpace.ROUTE_ENTRY, SHAPE, 0).word
    for fields in ({"axon": 3, "core": 2, "kind": RouteKind.AXON.value}, {"kind": RouteKind.HOST.value}):
        bits = RouteEntry.const({k: v for k, v in fields.items()}).as_bits()
        assert word.pack(**fields) == bits
    arrays = word.unpack(np.array([word.pack(axon=1, core=2), word.pack(kind=1)]))
    assert arrays["axon"].tolist() == [1, 0] and arrays["kind"].tolist() == [0, 1]
    neuron = locate(MemorySpace.NEURON, SHAPE, 0).word
    assert neuron.unpack(neuron.pack(bias=-5, profile=7)) == {"bias": -5, "profile": 7}


@pytest.mark.parametrize("space, addr, word, field, allowed", [
    (MemorySpace.WEIGHT, 0, 200, "weight", (-128, 127)),
    (MemorySpace.PROFILE, ProfileField.THRESHOLD.value, 1 << 23, "threshold", (0, (1 << 23) - 1)),
    (MemorySpace.PROFILE, ProfileField.RESET_MODE.value, 2, "reset_mode", (0, 1)),
    (MemorySpace.NEURON, 0, 1 << 27, "neuron word bits 31..27", (0, 0)),
    (MemorySpace.ROUTE_ENTRY, 0, 4 | RouteKind.HOST.value << 30, "route destination axon", (0, 0)),
    (MemorySpace.ROUTE_ENTRY, 0, 3 << 16, "route destination core", (0, 2)),
    (MemorySpace.WEIGHT, 32, 0, "addr", (0, 31)),
    (MemorySpace.CHIP, ChipRegister.STEP.value, 0, "step", None),
    (MemorySpace.COUNTER, 0, 0, "counter steps", None),
])
def test_check_word_names_field_value_and_range(space, addr, word, field, allowed):
    with pytest.raises(MemoryMapError) as caught:
        check_word(space, SHAPE, addr, word)
    assert isinstance(caught.value, ParameterError)
    assert (caught.value.field, caught.value.allowed) == (field, allowed)


def test_signed_words_are_accepted_in_either_form():
    assert check_word(MemorySpace.WEIGHT, SHAPE, 0, -3) == {"weight": -3}
    assert check_word(MemorySpace.WEIGHT, SHAPE, 0, 0xFFFFFFFD) == {"weight": -3}


def test_order_rule_uses_the_values_after_the_write():
    w_min = StdpField.W_MIN.value
    stored = {StdpField.W_MIN.value: -128, StdpField.W_MAX.value: 10}
    check_write(MemorySpace.STDP, SHAPE, 0, w_min, [50, 60], stored=stored.get)     # both written
    with pytest.raises(MemoryMapError) as caught:
        check_write(MemorySpace.STDP, SHAPE, 0, w_min, [50], stored=stored.get)     # against stored 10
    assert (caught.value.field, caught.value.value, caught.value.allowed) == ("w_min", 50, (-128, 10))
    with pytest.raises(MemoryMapError, match="w_min"):
        check_write(MemorySpace.STDP, SHAPE, 0, w_min, [5, 4])


def test_chip_shape_refuses_what_the_gateware_cannot_build():
    with pytest.raises(ParameterError, match="power of two") as caught:
        ChipShape(neurons=12, axons=4, lanes=3)
    assert caught.value.field == "lanes"
    with pytest.raises(ParameterError, match="WEIGHT address space"):
        ChipShape(neurons=1 << 16, axons=1 << 9, lanes=8)


def interesting_words(rng, word_decl):
    """Edge and random words for one layout: every field at and beyond its bounds."""
    words = [0, 1, -1, 0xFFFFFFFF, 1 << 31, rng.getrandbits(32)]
    for field in word_decl.fields.values():
        lo, hi = field.bounds(SHAPE)
        for value in (lo - 1, lo, hi, hi + 1):
            if word_decl.extended:
                words.append(value & 0xFFFFFFFF)
            else:
                name = next(n for n, f in word_decl.fields.items() if f is field)
                words.append(word_decl.pack(**{name: value}) | rng.choice([0, 1 << 30]))
    return [w & 0xFFFFFFFF for w in words]


def test_word_checker_matches_check_word():
    """The gateware checker accepts exactly the words check_word accepts: every space, every
    block, edge values of every field and random words, addresses just past the end."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = random.Random(seed)
    cases = []
    for space, decl in MEMORY_MAP.items():
        n = decl.size(SHAPE)
        for addr in sorted({0, 1, n - 1, n, rng.randrange(n)} | {decl.address(SHAPE, b.key) for b in decl.blocks}):
            word_decl = locate(space, SHAPE, min(addr, n - 1)).word
            for word in interesting_words(rng, word_decl):
                try:
                    check_word(space, SHAPE, addr, word)
                    cases.append((space, addr, word, 1))
                except MemoryMapError:
                    cases.append((space, addr, word, 0))
    assert 0 < sum(c[3] for c in cases) < len(cases)
    dut = WordChecker(SHAPE)
    mismatches = []

    async def bench(ctx):
        for space, addr, word, expected in cases:
            ctx.set(dut.space, space)
            ctx.set(dut.addr, addr)
            ctx.set(dut.data, word)
            if ctx.get(dut.ok) != expected:
                mismatches.append((space.name, addr, hex(word), expected))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert mismatches == []
