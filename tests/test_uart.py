"""The 8N1 UART PHY (neurofabric.hdl.uart) in the Amaranth simulator: a software line model
drives and checks the pins bit by bit; then the link behind the UART (UartLinkedChip)."""

import random

import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.protocol import LINK_IDENTIFY_BYTES, LinkCommand, LinkStatus
from neurofabric.hdl.top import UartLinkedChip
from neurofabric.hdl.uart import UARTReceiver, UARTTransmitter
from neurofabric.host.link import FrameReader, build_frame, parse_body
from neurofabric.host.model import ChipShape
from neurofabric.sim.device import loopback_factory
from neurofabric.sim.streams import stream_get


async def send_line(ctx, pin, byte, divisor, stop=1, bit_cycles=None):
    """Drive one 8N1 character on `pin` (stop bit value `stop`); `bit_cycles` may skew timing."""
    bit_cycles = bit_cycles or divisor
    for level in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(pin, level)
        await ctx.tick().repeat(bit_cycles)
    ctx.set(pin, 1)


async def receive_line(ctx, pin, divisor, budget):
    """Sample one character from `pin` in the middle of each bit; checks start and stop bits."""
    for _ in range(budget):
        if not ctx.get(pin):
            break
        await ctx.tick()
    else:
        raise AssertionError("no start bit")
    await ctx.tick().repeat(divisor // 2)
    assert ctx.get(pin) == 0, "start bit not held"
    value = 0
    for i in range(8):
        await ctx.tick().repeat(divisor)
        value |= ctx.get(pin) << i
    await ctx.tick().repeat(divisor)
    assert ctx.get(pin) == 1, "stop bit low"
    return value


@pytest.mark.parametrize("divisor", [4, 7, 32])
def test_receiver(divisor):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    dut = UARTReceiver(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(12)]
    got = []

    async def line(ctx):
        await ctx.tick().repeat(5)
        for byte in data:
            skew = divisor + (rng.choice([0, 1, -1]) if divisor >= 25 else 0)   # within 4 %
            await send_line(ctx, dut.pin, byte, divisor, bit_cycles=skew)
            await ctx.tick().repeat(rng.randrange(1, 4))
        # a framing error: dropped and counted, and the next byte is received normally
        await send_line(ctx, dut.pin, 0x3C, divisor, stop=0)
        await ctx.tick().repeat(divisor * 3)
        await send_line(ctx, dut.pin, 0xC3, divisor)

    async def sink(ctx):
        for _ in range(len(data) + 1):
            got.append(await stream_get(ctx, dut.data, budget=divisor * 40))
        assert ctx.get(dut.errors) == 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(sink)
    sim.run()
    assert got == data + [0xC3]


def test_receiver_overrun_and_glitch():
    divisor = 8
    dut = UARTReceiver(divisor)

    async def bench(ctx):
        ctx.set(dut.pin, 0)                       # a glitch shorter than half a bit
        await ctx.tick().repeat(2)
        ctx.set(dut.pin, 1)
        await ctx.tick().repeat(3 * divisor)
        assert not ctx.get(dut.data.valid)
        for byte in (0x11, 0x22):                 # nobody takes them: the second overruns
            await send_line(ctx, dut.pin, byte, divisor)
        await ctx.tick().repeat(divisor)
        assert ctx.get(dut.errors) == 1
        assert ctx.get(dut.data.payload) == 0x11 and ctx.get(dut.data.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("divisor", [4, 9])
def test_transmitter(divisor):
    rng = random.Random(divisor)
    dut = UARTTransmitter(divisor)
    data = [0x00, 0xFF, 0x01, 0x80] + [rng.randrange(256) for _ in range(8)]
    got = []

    async def source(ctx):
        for byte in data:
            ctx.set(dut.data.payload, byte)
            ctx.set(dut.data.valid, 1)
            await ctx.tick().until(dut.data.ready)
        ctx.set(dut.data.valid, 0)

    async def line(ctx):
        for _ in data:
            got.append(await receive_line(ctx, dut.pin, divisor, budget=20 * divisor))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(line)
    sim.run()
    assert got == data


def test_back_to_back_throughput():
    """The transmitter sends 10 bit times per byte with no idle gap."""
    divisor = 5
    dut = UARTTransmitter(divisor)
    bytes_sent = 6

    async def bench(ctx):
        ctx.set(dut.data.valid, 1)
        ctx.set(dut.data.payload, 0xA5)
        cycles = 0
        taken = 0
        while taken < bytes_sent:
            _, _, ready = await ctx.tick().sample(dut.data.ready)
            taken += ready
            cycles += 1
        assert cycles == (bytes_sent - 1) * 10 * divisor + 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_invalid_divisor():
    with pytest.raises(ValueError, match=r"divisor = 3 is out of range"):
        UARTReceiver(3)
    with pytest.raises(ValueError, match=r"divisor = 2.5 is out of range"):
        UARTTransmitter(2.5)


def test_link_behind_uart():
    """IDENTIFY and a damaged frame (NAK BAD_CRC) through the UART pins of UartLinkedChip."""
    divisor = 4
    shape = ChipShape(cores=1, neurons=8, axons=8, lanes=8, route_entries=8)
    dut = UartLinkedChip(shape, divisor=divisor, chip_factory=loopback_factory)
    good = build_frame(9, LinkCommand.IDENTIFY)
    bad = bytearray(build_frame(10, LinkCommand.IDENTIFY))
    bad[3] ^= 0x10
    replies = []

    async def host(ctx):
        for frame in (bytes(bad), good):
            received = bytearray()
            for byte in frame:
                await send_line(ctx, dut.uart_rx, byte, divisor)
            reader = FrameReader()
            bodies = []
            while not bodies:
                received.append(await receive_line(ctx, dut.uart_tx, divisor, budget=4000))
                bodies = reader.feed(bytes(received[-1:]))
            replies.append(parse_body(bodies[0]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    assert (replies[0].seq, replies[0].status) == (10, LinkStatus.BAD_CRC)
    assert (replies[1].seq, replies[1].status) == (9, LinkStatus.ACK)
    assert len(replies[1].payload) == LINK_IDENTIFY_BYTES
