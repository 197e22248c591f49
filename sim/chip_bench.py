"""A pysim bench for the whole chip (``neurofabric.hdl.chip.Chip``): memory requests, input
events and runs driven from ``sim.add_testbench``, the output collected in the background with a
back-pressure pattern, and the output split into steps. Every wait has a cycle budget.

    bench = ChipBench(dut, ready_probability=0.5, seed=1)
    sim.add_testbench(bench.collect, background=True)
    ... await bench.mem(ctx, MemorySpace.CHIP, 0, addr, data, write=True)
    ... await bench.run_network(ctx, net)           # net.inputs[step] = [(core, axon), ...]
    per_step = spikes_by_step(bench.out, steps)
"""

import random

from neurofabric.hdl.protocol import EventKind
from neurofabric.sim.streams import mem_transaction, stream_put

__all__ = ["ChipBench", "spikes_by_step"]


class ChipBench:
    """Drives a Chip in the Amaranth simulator; every wait has a cycle budget."""

    def __init__(self, dut, ready_probability=1.0, seed=0):
        self.dut = dut
        self.out = []                   # (kind, core, index)
        self.ready_rng = random.Random(seed)
        self.ready_probability = ready_probability
        self.markers = 0

    async def mem(self, ctx, space, core, addr, data=0, write=False, budget=3000):
        payload = {"mem": space, "core": core, "addr": addr, "data": data, "write": int(write)}
        return await mem_transaction(ctx, self.dut, payload, budget)

    async def put(self, ctx, stream, payload, budget=20000):
        await stream_put(ctx, stream, payload, budget)

    async def collect(self, ctx):
        """Background: take `out` events with the ready pattern, forever."""
        dut = self.dut
        while True:
            ready = self.ready_probability >= 1.0 or self.ready_rng.random() < self.ready_probability
            ctx.set(dut.out.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.out.valid, dut.out.payload)
            if valid and ready:
                self.out.append((payload.kind, payload.core, payload.index))
                if payload.kind == EventKind.STEP:
                    self.markers += 1

    async def wait_markers(self, ctx, count, budget):
        for _ in range(budget):
            if self.markers >= count:
                return
            await ctx.tick()
        raise AssertionError(f"{self.markers} of {count} step markers within {budget} cycles")

    async def run_network(self, ctx, net, first_step=0):
        """Inject inputs in chunks that fit the queue, run each chunk, wait for its markers."""
        queue_room = self.dut.input_queue_depth
        t = first_step
        while t < net.steps:
            chunk, events = 0, 0
            while t + chunk < net.steps and (chunk == 0 or events + len(net.inputs[t + chunk]) <= queue_room):
                events += len(net.inputs[t + chunk])
                chunk += 1
            for s in range(t, t + chunk):
                for core, axon in net.inputs[s]:
                    await self.put(ctx, self.dut.inject, {"core": core, "axon": axon, "step": s & 0xFFFF})
            await self.put(ctx, self.dut.run, chunk)
            await self.wait_markers(ctx, t + chunk, budget=3000 * chunk)
            t += chunk


def spikes_by_step(out, steps, first_step=0):
    """Split `out` at STEP markers: per step the sorted (core, neuron) spikes; checks that there
    are `steps` markers numbered from `first_step` and that each core's spikes come in order."""
    per_step, current, step = [], [], first_step
    for kind, core, index in out:
        if kind == EventKind.STEP:
            assert index == step & 0xFFFF, f"marker {index} where step {step} ended"
            per_step.append(current)
            current, step = [], step + 1
        else:
            assert kind == EventKind.SPIKE
            current.append((core, index))
    assert not current, f"spikes after the last marker: {current}"
    assert len(per_step) == steps, f"{len(per_step)} step markers, expected {steps}"
    for t, spikes in enumerate(per_step):
        for c in {core for core, _ in spikes}:
            neurons = [n for core, n in spikes if core == c]
            assert neurons == sorted(neurons), f"step {t}: core {c}'s host spikes out of order"
    return [sorted(s) for s in per_step]
