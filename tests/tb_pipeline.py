"""cocotb testbench for neurofabric.hdl.pipeline.SkidBuffer (launched by tests/test_pipeline.py).

Driver (input stream, random idle cycles, holds valid/payload until accepted), sink (random
``ready``), monitor (records output transfers, checks that a stalled output holds its payload)
and scoreboard (output sequence == input sequence: nothing lost, duplicated or reordered).
Each test resets the DUT first. The random seed is cocotb's (``COCOTB_RANDOM_SEED``), logged.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

CLOCK_NS = 10


def payload_width(dut):
    return len(dut.i_stream__payload)


async def reset(dut):
    dut.i_stream__valid.value = 0
    dut.i_stream__payload.value = 0
    dut.o_stream__ready.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class StreamDriver:
    """Offers `items` on the input stream; each item is offered with probability `valid_probability`
    per idle cycle and then held (valid and payload stable) until the DUT accepts it."""

    def __init__(self, dut, rng, valid_probability):
        self.dut, self.rng, self.valid_probability = dut, rng, valid_probability
        self.sent = []
        self.cycles = 0

    async def run(self, items):
        dut = self.dut
        index = 0
        offering = False
        while index < len(items):
            if not offering and self.rng.random() < self.valid_probability:
                offering = True
                dut.i_stream__payload.value = items[index]
            dut.i_stream__valid.value = int(offering)
            await ReadOnly()
            accepted = offering and dut.i_stream__ready.value == 1
            await RisingEdge(dut.clk)
            self.cycles += 1
            if accepted:
                self.sent.append(items[index])
                index += 1
                offering = False
        dut.i_stream__valid.value = 0


class ReadySink:
    """Drives the output's ready high with probability `ready_probability` each cycle."""

    def __init__(self, dut, rng, ready_probability):
        self.dut, self.rng, self.ready_probability = dut, rng, ready_probability

    async def run(self):
        while True:
            self.dut.o_stream__ready.value = int(self.rng.random() < self.ready_probability)
            await RisingEdge(self.dut.clk)


class StreamMonitor:
    """Records every output transfer; checks valid and payload hold while the output is stalled."""

    def __init__(self, dut):
        self.dut = dut
        self.received = []
        self.cycles = 0
        self.protocol_errors = []

    async def run(self):
        dut = self.dut
        stalled_payload = None
        while True:
            await ReadOnly()
            valid = dut.o_stream__valid.value == 1
            ready = dut.o_stream__ready.value == 1
            payload = dut.o_stream__payload.value.to_unsigned()
            if stalled_payload is not None and not (valid and payload == stalled_payload):
                self.protocol_errors.append(
                    f"cycle {self.cycles}: stalled output changed (valid={int(valid)}, payload={payload:#x}, "
                    f"was {stalled_payload:#x})")
            if valid and ready:
                self.received.append(payload)
            stalled_payload = payload if valid and not ready else None
            await RisingEdge(dut.clk)
            self.cycles += 1


class Scoreboard:
    """The reference: a stream register slice forwards exactly the accepted items, in order."""

    def __init__(self, log):
        self.log = log

    def check(self, sent, received, monitor):
        assert not monitor.protocol_errors, "; ".join(monitor.protocol_errors[:5])
        assert len(received) <= len(sent), f"{len(received)} outputs for {len(sent)} inputs: duplication"
        for position, (want, got) in enumerate(zip(sent, received)):
            assert want == got, f"output #{position} is {got:#x}, expected {want:#x} (loss or reordering)"
        assert len(received) == len(sent), f"only {len(received)} of {len(sent)} items came out: loss"
        self.log.info("scoreboard: %d items matched", len(received))


async def run_traffic(dut, ready_probability, valid_probability, count):
    rng = random.Random(cocotb.RANDOM_SEED ^ int(ready_probability * 1000) ^ int(valid_probability * 7))
    dut._log.info("seed %d, ready p=%s, valid p=%s, %d items", cocotb.RANDOM_SEED, ready_probability,
                  valid_probability, count)
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    await reset(dut)
    width = payload_width(dut)
    extremes = [0, (1 << width) - 1, 1 << (width - 1), 1]
    items = extremes + [rng.getrandbits(width) for _ in range(count - len(extremes))]
    driver = StreamDriver(dut, rng, valid_probability)
    sink = ReadySink(dut, rng, ready_probability)
    monitor = StreamMonitor(dut)
    cocotb.start_soon(sink.run())
    cocotb.start_soon(monitor.run())
    await driver.run(items)
    # Drain: with the sink still random, the at most two items in flight must come out.
    budget = 64 if ready_probability >= 0.5 else 400
    for _ in range(budget):
        if len(monitor.received) >= len(driver.sent):
            break
        await RisingEdge(dut.clk)
    Scoreboard(dut._log).check(driver.sent, monitor.received, monitor)
    assert driver.sent == items
    return monitor


@cocotb.test()
@cocotb.parametrize(ready_probability=[1.0, 0.5, 0.1])
async def random_traffic(dut, ready_probability):
    """Random valid (p=0.7) and random ready: every item arrives once, in order."""
    await run_traffic(dut, ready_probability, 0.7, 300 if ready_probability > 0.2 else 120)


@cocotb.test()
async def full_throughput(dut):
    """Input always valid, output always ready: one transfer per cycle after one cycle of latency."""
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    await reset(dut)
    dut.o_stream__ready.value = 1
    monitor = StreamMonitor(dut)
    cocotb.start_soon(monitor.run())
    count = 100
    rng = random.Random(cocotb.RANDOM_SEED)
    items = [rng.getrandbits(payload_width(dut)) for _ in range(count)]
    driver = StreamDriver(dut, rng, 1.0)
    await driver.run(items)
    assert driver.cycles == count, f"{count} inputs took {driver.cycles} cycles"
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert monitor.received == items, "full-throughput stream corrupted"
