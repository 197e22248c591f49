"""Tests of neurofabric.boards.synth: the pin-lean harness and one real iCE40 UP5K run."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from neurofabric.boards.synth import SynthHarness, synthesize
from neurofabric.hdl.pipeline import SkidBuffer


class Accumulator(wiring.Component):
    """Sums a byte stream into a 16-bit register (a carry chain) behind a SkidBuffer; `hold`
    stalls the sum, so the slice's skid register is in use."""

    i_stream: In(stream.Signature(8))
    hold: In(1)
    total: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.slice = slice_ = SkidBuffer(8)
        wiring.connect(m, wiring.flipped(self.i_stream), slice_.i_stream)
        m.d.comb += slice_.o_stream.ready.eq(~self.hold)
        with m.If(slice_.o_stream.valid & ~self.hold):
            m.d.sync += self.total.eq(self.total + slice_.o_stream.payload)
        return m


class Passthrough(wiring.Component):
    a: In(5)
    y: Out(5)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(self.a ^ 0b10110)
        return m


def test_harness_matches_its_description(seed):
    """The harness against a Python model of what its docstring says: a shift chain (reset bit
    first) drives the inputs, outputs are captured, then folded into a rotating signature."""
    rng = random.Random(seed)
    harness = SynthHarness(Passthrough())
    assert (harness.in_bits, harness.out_bits, harness.ff) == (5, 5, 1 + 5 + 2 * 5)
    chain_bits, out_bits = 1 + harness.in_bits, harness.out_bits
    sdi = [rng.getrandbits(1) for _ in range(200)]

    chain = captured = signature = 0
    expected = []
    for bit in sdi:
        a = (chain >> 1) & 0b11111
        y = a ^ 0b10110
        rotated = ((signature << 1) | (signature >> (out_bits - 1))) & ((1 << out_bits) - 1)
        chain, captured, signature = ((chain << 1) | bit) & ((1 << chain_bits) - 1), y, rotated ^ captured
        expected.append(signature >> (out_bits - 1))

    observed = []

    async def bench(ctx):
        for bit in sdi:    # the harness's clock is its `clk` pin: toggle it by hand
            ctx.set(harness.sdi, bit)
            await ctx.delay(5e-7)
            ctx.set(harness.clk, 1)
            await ctx.delay(5e-7)
            observed.append(ctx.get(harness.sdo))
            ctx.set(harness.clk, 0)

    sim = Simulator(harness)
    sim.add_testbench(bench)
    sim.run()
    assert observed == expected
    assert 0 < sum(observed) < len(observed)


@pytest.mark.synth
def test_synthesize_ice40_up5k(tmp_path):
    messages = []
    result = synthesize(Accumulator(), family="ice40", device="up5k", package="sg48", clock_mhz=24,
                        name="accumulator", progress=messages.append)
    print(result)
    assert messages, "progress was never reported"
    assert 10 < result.fmax_mhz < 1000, result.fmax_mhz
    assert result.target_mhz == 24
    core_ff = 16 + 2 * (8 + 1)              # total + two slice entries (payload and valid)
    assert result.ff >= result.harness_ff + core_ff - 2, (result.ff, result.harness_ff)
    assert result.ff <= result.harness_ff + core_ff + 8
    assert result.lut4 >= result.harness_lut4
    assert result.carry >= 14, "a 16-bit adder should use the carry chain"
    assert (result.bram, result.spram, result.dsp) == (0, 0, 0)
    for path in (result.report_path, result.stat_path, result.yosys_log_path, result.nextpnr_log_path):
        assert path.is_file(), path

    # A second call with the same design is served from the cache and returns the same figures.
    again = synthesize(Accumulator(), family="ice40", device="up5k", package="sg48", clock_mhz=24,
                       name="accumulator", progress=messages.append)
    assert again == result
    assert messages[-1].endswith("cached")


def test_rejects_bad_arguments():
    # Arguments are checked before the component is looked at.
    with pytest.raises(ValueError, match="family: 'gowin'"):
        synthesize(object(), family="gowin", device="up5k", package="sg48", clock_mhz=24, name="x")
    with pytest.raises(ValueError, match="device: 'LFE5U-85F' is not a known ice40 device"):
        synthesize(object(), family="ice40", device="LFE5U-85F", package="sg48", clock_mhz=24, name="x")
    with pytest.raises(ValueError, match="clock_mhz: -5"):
        synthesize(object(), family="ecp5", device="LFE5U-85F", package="CABGA381", clock_mhz=-5, name="x")
    with pytest.raises(TypeError, match="component: expected a wiring.Component"):
        synthesize(object(), family="ecp5", device="LFE5U-85F", package="CABGA381", clock_mhz=50, name="x")


@pytest.mark.synth
def test_synthesize_ecp5_85f():
    result = synthesize(Accumulator(), family="ecp5", device="LFE5U-85F", package="CABGA381", clock_mhz=100,
                        name="accumulator")
    print(result)
    assert 50 < result.fmax_mhz < 1000, result.fmax_mhz
    core_ff = 16 + 2 * (8 + 1)
    assert result.harness_ff + core_ff - 2 <= result.ff <= result.harness_ff + core_ff + 8, result
    assert result.carry >= 8, "a 16-bit adder should use at least eight CCU2C (two bits each)"
    assert (result.bram, result.spram, result.dsp) == (0, 0, 0)
