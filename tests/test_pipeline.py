"""Tests of neurofabric.hdl.pipeline.SkidBuffer: Amaranth simulation against a Python reference,
a cocotb + Verilator smoke test (tests/tb_pipeline.py) and a formal proof (sby + yices)."""

import random
from collections import deque
from pathlib import Path

import pytest
from amaranth.hdl import Assert, Cover, Elaboratable, Module, Signal, signed
from amaranth.lib import data
from amaranth.sim import Simulator

from neurofabric.hdl.pipeline import SkidBuffer

TESTS = Path(__file__).parent


class ReferenceSlice:
    """What a two-entry register slice with registered ready/valid must do, cycle by cycle:
    ready while fewer than two items are held, valid while any is, the oldest item at the
    output, no same-cycle bypass from input to output."""

    def __init__(self):
        self.items = deque()

    @property
    def ready(self):
        return len(self.items) < 2

    @property
    def valid(self):
        return len(self.items) > 0

    def step(self, in_valid, in_payload, out_ready):
        taken = self.items.popleft() if self.valid and out_ready else None
        accepted = in_valid and len(self.items) + (taken is not None) < 2
        if accepted:
            self.items.append(in_payload)
        return taken


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("ready_probability", [1.0, 0.5, 0.1])
def test_matches_reference_under_backpressure(ready_probability):
    seed = random.randrange(1 << 32)
    print(f"seed={seed} ready_probability={ready_probability}")
    rng = random.Random(seed)
    width = 12
    dut = SkidBuffer(width)
    cycles = 600
    stats = {"in": 0, "out": 0, "skid_full": 0}

    async def bench(ctx):
        reference = ReferenceSlice()
        sent, received = [], []
        for cycle in range(cycles):
            in_valid = rng.random() < 0.7
            in_payload = rng.choice([0, (1 << width) - 1, rng.getrandbits(width)])
            out_ready = ready_probability >= 1.0 or rng.random() < ready_probability
            ctx.set(dut.i_stream.valid, in_valid)
            ctx.set(dut.i_stream.payload, in_payload)
            ctx.set(dut.o_stream.ready, out_ready)
            i_ready = ctx.get(dut.i_stream.ready)
            o_valid = ctx.get(dut.o_stream.valid)
            o_payload = ctx.get(dut.o_stream.payload)
            where = f"cycle {cycle} (seed {seed})"
            assert i_ready == reference.ready, f"{where}: i_stream.ready={i_ready}, reference {reference.ready}"
            assert o_valid == reference.valid, f"{where}: o_stream.valid={o_valid}, reference {reference.valid}"
            if o_valid:
                assert o_payload == reference.items[0], \
                    f"{where}: o_stream.payload={o_payload:#x}, reference {reference.items[0]:#x}"
            stats["skid_full"] += not i_ready
            if in_valid and i_ready:
                sent.append(in_payload)
            if o_valid and out_ready:
                received.append(o_payload)
            reference.step(in_valid, in_payload, out_ready)
            await ctx.tick()
        assert received == sent[:len(received)]
        assert len(sent) - len(received) <= 2
        stats["in"], stats["out"] = len(sent), len(received)

    simulate(dut, bench)
    # The run must have exercised the interesting states, or it proves little.
    assert stats["out"] > 30
    if ready_probability < 1.0:
        assert stats["skid_full"] > 10, stats


def test_full_throughput_one_per_cycle():
    dut = SkidBuffer(8)
    count = 64

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        received = []
        for cycle in range(count + 1):
            if cycle < count:
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, cycle)
                assert ctx.get(dut.i_stream.ready), f"input stalled at cycle {cycle} with the output ready"
            else:
                ctx.set(dut.i_stream.valid, 0)
            if ctx.get(dut.o_stream.valid):
                received.append(ctx.get(dut.o_stream.payload))
            await ctx.tick()
        assert received == list(range(count)), "expected one item per cycle after one cycle of latency"

    simulate(dut, bench)


def test_stall_holds_output_and_drops_ready():
    dut = SkidBuffer(signed(8))

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload, -128)
        assert ctx.get(dut.i_stream.ready) and not ctx.get(dut.o_stream.valid)
        await ctx.tick()
        ctx.set(dut.i_stream.payload, 127)
        assert ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload) == -128
        assert ctx.get(dut.i_stream.ready), "the skid register must take a second item"
        await ctx.tick()
        ctx.set(dut.i_stream.payload, 5)
        assert not ctx.get(dut.i_stream.ready), "ready must drop with two items held"
        for _ in range(3):
            assert ctx.get(dut.o_stream.payload) == -128
            await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(dut.o_stream.ready, 1)
        assert ctx.get(dut.o_stream.payload) == -128
        await ctx.tick()
        assert ctx.get(dut.o_stream.payload) == 127 and ctx.get(dut.o_stream.valid)
        assert ctx.get(dut.i_stream.ready), "ready rises once the skid register drains"
        await ctx.tick()
        assert not ctx.get(dut.o_stream.valid)

    simulate(dut, bench)


def test_struct_payload_passes_through():
    layout = data.StructLayout({"index": 5, "weight": signed(7)})
    dut = SkidBuffer(layout)

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload, {"index": 31, "weight": -64})
        await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        payload = ctx.get(dut.o_stream.payload)
        assert ctx.get(dut.o_stream.valid)
        assert (payload.index, payload.weight) == (31, -64)

    simulate(dut, bench)


def test_rejects_bad_payload_shape():
    with pytest.raises(TypeError, match="payload_shape"):
        SkidBuffer("wide")


@pytest.mark.verilator
def test_skid_buffer_cocotb_verilator():
    from neurofabric.sim.cocotb import run_cocotb
    run_cocotb(SkidBuffer(16), test_module="tb_pipeline", test_dir=TESTS)


class SkidBufferProperties(Elaboratable):
    """Formal harness: free input stream and free output ready, with the stream properties.

    * the output obeys the stream rules: once valid, valid and payload hold until the transfer;
    * occupancy (accepted minus delivered) never exceeds two, ``o.valid`` iff it is non-zero and
      ``i.ready`` iff it is below two: nothing is invented, dropped or held back;
    * one input transfer, chosen freely by the solver, is tracked with the number of items ahead
      of it; when those have left, the next output must be exactly the tracked payload: with a
      free choice this covers every item, so order and contents are preserved. For the
      induction step the harness also states where the tracked item waits (output register or
      the DUT's skid register), since an item may wait there for any number of cycles.
    """

    def __init__(self, width=4, dut_class=SkidBuffer):
        self.width = width
        self.dut_class = dut_class

    def elaborate(self, platform):
        from neurofabric.sim.formal import free

        m = Module()
        m.submodules.dut = dut = self.dut_class(self.width)
        i, o = dut.i_stream, dut.o_stream
        m.d.comb += [i.valid.eq(free(1)), i.payload.eq(free(self.width)), o.ready.eq(free(1))]

        in_fire = Signal()
        out_fire = Signal()
        m.d.comb += [in_fire.eq(i.valid & i.ready), out_fire.eq(o.valid & o.ready)]

        # Output stream rule.
        was_stalled = Signal()
        stalled_payload = Signal(self.width)
        m.d.sync += [was_stalled.eq(o.valid & ~o.ready), stalled_payload.eq(o.payload)]
        with m.If(was_stalled):
            m.d.comb += Assert(o.valid & (o.payload == stalled_payload), "stalled output changed")

        # Occupancy: no loss, no duplication, bounded.
        occupancy = Signal(range(4))
        m.d.sync += occupancy.eq(occupancy + in_fire - out_fire)
        m.d.comb += [
            Assert(occupancy <= 2, "more than two items held"),
            Assert(o.valid == (occupancy != 0), "output valid disagrees with occupancy"),
            Assert(i.ready == (occupancy < 2), "input ready disagrees with occupancy"),
        ]

        # Tracked item: order and contents.
        pick = free(1)
        tracking = Signal()
        tracked_done = Signal()
        tracked_payload = Signal(self.width)
        ahead = Signal(range(4))
        ahead_at_pick = Signal(range(4))
        with m.If(tracking):
            with m.If(out_fire):
                with m.If(ahead == 0):
                    m.d.comb += Assert(o.payload == tracked_payload, "tracked item came out changed or out of order")
                    m.d.sync += [tracking.eq(0), tracked_done.eq(1)]
                with m.Else():
                    m.d.sync += ahead.eq(ahead - 1)
            m.d.comb += Assert(ahead < occupancy, "tracked item lost")
            # Where the tracked item waits (inductive strengthening: it may wait forever).
            with m.If(ahead == 0):
                m.d.comb += Assert(o.valid & (o.payload == tracked_payload), "tracked item not at the head")
            with m.Else():
                m.d.comb += Assert((ahead == 1) & dut.skid_valid & (dut.skid_payload == tracked_payload),
                                   "tracked item not in the skid register")
        with m.Elif(~tracked_done & in_fire & pick):
            m.d.sync += [tracking.eq(1), tracked_payload.eq(i.payload),
                         ahead.eq(occupancy - out_fire), ahead_at_pick.eq(occupancy - out_fire)]

        # Covers: each interesting situation must be reachable (so the asserts are not vacuous).
        streak = Signal(range(5))
        with m.If(out_fire):
            with m.If(streak < 4):
                m.d.sync += streak.eq(streak + 1)
        with m.Else():
            m.d.sync += streak.eq(0)
        m.d.comb += [
            Cover(occupancy == 2),                                   # skid register in use
            Cover(~i.ready & i.valid),                               # back-pressure reaches the input
            Cover(tracked_done & (ahead_at_pick == 1)),              # an item that waited behind another came out
            Cover(streak == 4),                                      # sustained one-per-cycle output
            Cover(was_stalled & out_fire & in_fire),                 # drain and refill in one cycle
        ]
        return m


@pytest.mark.formal
def test_skid_buffer_formal():
    from neurofabric.sim.formal import check
    result = check(SkidBufferProperties(width=4), name="skid_buffer",
                   depths={"bmc": 16, "prove": 6, "cover": 16})
    assert result.status == {"bmc": "PASS", "prove": "PASS", "cover": "PASS"}
    print("formal seconds:", result.seconds)


class DroppingSkidBuffer(SkidBuffer):
    """A broken slice for the harness to catch: while the output stalls it keeps accepting input
    and drops it (no skid register)."""

    def elaborate(self, platform):
        m = Module()
        out_valid = Signal()
        out_payload = Signal.like(self.o_stream.payload)
        m.d.comb += [self.i_stream.ready.eq(1), self.o_stream.valid.eq(out_valid),
                     self.o_stream.payload.eq(out_payload)]
        with m.If(self.o_stream.ready | ~out_valid):
            m.d.sync += [out_payload.eq(self.i_stream.payload), out_valid.eq(self.i_stream.valid)]
        return m


@pytest.mark.formal
def test_formal_harness_catches_a_lossy_slice():
    from neurofabric.sim.formal import FormalError, check
    with pytest.raises(FormalError, match="bmc: FAIL"):
        check(SkidBufferProperties(width=4, dut_class=DroppingSkidBuffer), name="dropping_slice",
              depths={"bmc": 8})


@pytest.mark.verilator
def test_cocotb_scoreboard_catches_a_lossy_slice():
    from neurofabric.sim.cocotb import run_cocotb
    with pytest.raises(AssertionError, match=r"failed 1 of 1 tests: random_traffic/ready_probability=0\.5"):
        run_cocotb(DroppingSkidBuffer(16), test_module="tb_pipeline", test_dir=TESTS,
                   testcase="random_traffic/ready_probability=0.5")
