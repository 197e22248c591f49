"""Amaranth-simulator helpers for `amaranth.lib.stream` interfaces, each wait with a cycle budget.

Use them inside ``sim.add_testbench(async def bench(ctx): ...)``::

    await stream_put(ctx, dut.i_events, {"index": 3, "core": 0}, budget=100)
    payload = await stream_get(ctx, dut.o_spikes, budget=1000)

A wait that exceeds its budget raises :class:`SimulationTimeout` naming the stream and the
budget, so a hung design fails the test instead of hanging it.
"""

import random

__all__ = ["SimulationTimeout", "stream_put", "stream_get", "mem_transaction", "wait_until", "ready_pattern"]


class SimulationTimeout(AssertionError):
    """A simulated wait took longer than its cycle budget."""


async def wait_until(ctx, signal, budget, what=None):
    """Tick until `signal` is asserted (sampled after a clock edge); at most `budget` cycles."""
    for _ in range(budget):
        if ctx.get(signal):
            return
        await ctx.tick()
    if not ctx.get(signal):
        raise SimulationTimeout(f"{what or signal} not asserted within {budget} cycles")


async def stream_put(ctx, stream, payload, budget=10_000):
    """Offer `payload` on `stream` until it is accepted (at most `budget` cycles)."""
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    for _ in range(budget):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            ctx.set(stream.valid, 0)
            return
    raise SimulationTimeout(f"stream_put: not accepted within {budget} cycles")


async def stream_get(ctx, stream, budget=10_000):
    """Accept one payload from `stream` (at most `budget` cycles); returns its value."""
    ctx.set(stream.ready, 1)
    for _ in range(budget):
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid:
            ctx.set(stream.ready, 0)
            return payload
    raise SimulationTimeout(f"stream_get: nothing arrived within {budget} cycles")


async def mem_transaction(ctx, dut, payload, budget=10_000):
    """One memory request: `payload` (a MemRequest value) offered on ``dut.mem`` until accepted,
    then the response word taken from ``dut.mem_resp``; each wait at most `budget` cycles."""
    await stream_put(ctx, dut.mem, payload, budget)
    return await stream_get(ctx, dut.mem_resp, budget)


def ready_pattern(probability, seed):
    """An endless iterator of booleans, True with `probability`: a back-pressure pattern."""
    rng = random.Random(seed)
    while True:
        yield probability >= 1.0 or rng.random() < probability
