"""The chip (cores + router + step controller) against ChipModel, in the Amaranth simulator.

A random multi-core network with feed-forward, recurrent, self-loop, multicast and host routes
is configured in the model and in the chip (route table and, for the real core, every core
memory through ``mem``); host inputs are injected in chunks ahead of ``run`` and every step's
host spikes (between STEP markers) must equal the model's, as must the counters. The
Verilator version runs >= 100 steps (tests/test_chip_cocotb.py).
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.chip import MEM_OK, MEM_REFUSED, Chip
from neurofabric.hdl.protocol import (
    DECAY_ONE,
    ChipRegister,
    CoreRegister,
    Counter,
    EventKind,
    MemorySpace,
    ProfileField,
    ResetMode,
)
from neurofabric.hdl.router import route_entry_bits, route_pointer_bits
from neurofabric.host.model import ChipModel, ChipShape, NeuronProfile, Route
from neurofabric.sim.chip_bench import ChipBench, spikes_by_step
from neurofabric.sim.router_testcore import IntegrateFireCore

PROFILE_ORDER = ["du", "dv", "threshold", "v_reset", "reset_mode", "refractory", "theta_plus", "dtheta"]


class Network:
    """A random network on `shape`: model, stand-in core parameters, routes, inputs per step."""

    def __init__(self, shape, seed, steps, *, lif=False, input_rate=3):
        rng = np.random.default_rng(seed)
        prng = random.Random(seed)
        self.shape, self.steps = shape, steps
        self.model = ChipModel(shape)
        self.core_params = []
        self.profiles = []
        for c in range(shape.cores):
            weights = rng.integers(-40, 110, size=(shape.axons, shape.neurons))
            bias = rng.integers(-30, 50, size=shape.neurons)
            threshold = prng.randint(120, 400)
            weight_exp = prng.choice([0, 1])
            self.model.set_weights(c, weights, weight_exp)
            if lif:
                profiles = [NeuronProfile(du=prng.choice([0, 512, 2048, DECAY_ONE]), dv=prng.choice([0, 300, 1024]),
                                          threshold=prng.randint(100, 600), v_reset=prng.randint(-50, 10),
                                          reset_mode=prng.choice(list(ResetMode)), refractory=prng.choice([0, 1, 3]),
                                          theta_plus=prng.choice([0, 20]), dtheta=prng.choice([0, 100]))
                            for _ in range(4)]
                profile = rng.integers(0, len(profiles), size=shape.neurons)
            else:
                profiles = [NeuronProfile(du=DECAY_ONE, dv=0, threshold=threshold)]
                profile = np.zeros(shape.neurons, dtype=np.int64)
            self.model.set_profiles(c, profiles)
            self.model.set_neurons(c, bias=bias, profile=profile)
            self.profiles.append(self.model.cores[c].profiles)
            self.core_params.append(dict(weights=weights.tolist(), bias=bias.tolist(), threshold=threshold,
                                         weight_exp=weight_exp))
        routes, used = {}, 0
        for c in range(shape.cores):
            for n in range(shape.neurons):
                entries = []
                if c + 1 < shape.cores and prng.random() < 0.7:                  # feed-forward
                    entries.append(Route(core=c + 1, axon=prng.randrange(shape.axons)))
                if c == shape.cores - 1 and prng.random() < 0.5:                 # recurrent
                    entries.append(Route(core=0, axon=prng.randrange(shape.axons)))
                if prng.random() < 0.3:                                          # self-loop
                    entries.append(Route(core=c, axon=prng.randrange(shape.axons)))
                if prng.random() < 0.5:                                          # host
                    entries.append(Route(host=True))
                for _ in range(prng.choice([0, 0, 1, 2])):                       # multicast
                    entries.append(Route(core=prng.randrange(shape.cores), axon=prng.randrange(shape.axons)))
                entries = entries[:shape.route_entries - used]
                used += len(entries)
                if entries:
                    routes[(c, n)] = entries
        self.routes = routes
        self.model.set_routes(routes)
        self.inputs = [[(prng.randrange(shape.cores), prng.randrange(shape.axons))
                        for _ in range(prng.randint(0, input_rate))] for _ in range(steps)]

    def core_factory(self, stall=True):
        shape = self.shape
        return lambda i: IntegrateFireCore(shape.neurons, shape.axons, shape.lanes, **self.core_params[i],
                                           stall_seed=(0x1234 + 77 * i) if stall else 0)

    def route_writes(self):
        writes, base = [], 0
        for (c, n), entries in sorted(self.routes.items()):
            writes.append((MemorySpace.ROUTE_POINTER, 0, c * self.shape.neurons + n,
                           route_pointer_bits(base, len(entries))))
            for i, r in enumerate(entries):
                bits = route_entry_bits(host=True) if r.host else route_entry_bits(core=r.core, axon=r.axon)
                writes.append((MemorySpace.ROUTE_ENTRY, 0, base + i, bits))
            base += len(entries)
        return writes

    def core_writes(self):
        """Everything a NeuronCore needs: weights, neurons, profiles, weight exponent."""
        writes, shape = [], self.shape
        for c, s in enumerate(self.model.cores):
            for a in range(shape.axons):
                for n in range(shape.neurons):
                    writes.append((MemorySpace.WEIGHT, c, a * shape.neurons + n, int(s.weights[a, n]) & 0xFFFFFFFF))
            for n in range(shape.neurons):
                writes.append((MemorySpace.NEURON, c, n, (int(s.bias[n]) & 0xFFFFFF) | int(s.profile[n]) << 24))
            for p, profile in enumerate(s.profiles):
                for f in ProfileField:
                    value = getattr(profile, PROFILE_ORDER[f.value])
                    value = value.value if isinstance(value, ResetMode) else value
                    writes.append((MemorySpace.PROFILE, c, p * 8 + f.value, int(value) & 0xFFFFFFFF))
            writes.append((MemorySpace.CORE, c, CoreRegister.WEIGHT_EXP.value, s.weight_exp))
        return writes

    def expected(self):
        """Host spikes per step, as the model computes them (sorted (core, neuron) lists)."""
        for t, events in enumerate(self.inputs):
            if events:
                self.model.inject(t, events)
        per_step = [[] for _ in range(self.steps)]
        for t, core, neuron in self.model.run(self.steps):
            per_step[t].append((core, neuron))
        return per_step


def simulate_network(net, dut, writes, ready_probability, seed, extra=None, during_run=None):
    """Load `writes`, run the network, read the counters; `extra(ctx, bench, result)` runs after,
    `during_run(ctx, bench, phase)` concurrently with the run (it may use `mem`)."""
    bench = ChipBench(dut, ready_probability, seed)
    result = {}
    phase = {"running": False, "done": False}

    async def main(ctx):
        for space, core, addr, data in writes:
            resp = await bench.mem(ctx, space, core, addr, data, write=True)
            assert resp == MEM_OK, f"write {space.name} core {core} [{addr}] = {data:#x}: {resp}"
        phase["running"] = True
        await bench.run_network(ctx, net)
        phase["running"] = False
        while during_run is not None and not phase["done"]:
            await ctx.tick()
        result["counters"] = {c: await bench.mem(ctx, MemorySpace.COUNTER, 0, c.value) for c in Counter}
        result["step"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.STEP.value)
        result["running"] = ctx.get(dut.running)
        if extra is not None:
            await extra(ctx, bench, result)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(main)
    sim.add_testbench(bench.collect, background=True)
    if during_run is not None:
        async def concurrent(ctx):
            while not phase["running"]:
                await ctx.tick()
            await during_run(ctx, bench, phase)
            phase["done"] = True
        sim.add_testbench(concurrent)
    sim.run()
    return bench, result


def check_against_model(net, bench, result):
    expected = net.expected()
    got = spikes_by_step(bench.out, net.steps)
    assert len(got) == net.steps
    for t in range(net.steps):
        assert got[t] == sorted(expected[t]), f"step {t}: chip {got[t]} != model {sorted(expected[t])}"
    counters = result["counters"]
    m = net.model.counters
    for c in Counter:
        if c is not Counter.OUTPUT_STALLS:
            assert counters[c] == m[c], f"counter {c.name}: chip {counters[c]}, model {m[c]}"
    assert counters[Counter.STEPS] == net.steps
    assert counters[Counter.INPUT_EVENTS] == sum(map(len, net.inputs))
    assert result["step"] == net.steps and not result["running"]
    # the network must actually exercise the router
    assert m[Counter.HOST_SPIKES] > net.steps // 2 and counters[Counter.ROUTED_EVENTS] > net.steps
    return counters


SHAPE = ChipShape(cores=3, neurons=8, axons=16, lanes=1, route_entries=96)


@pytest.mark.parametrize("ready_probability", [1.0, 0.3])
def test_chip_standin_cores_against_model(ready_probability):
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    net = Network(SHAPE, seed, steps=30)
    dut = Chip(SHAPE, core_factory=net.core_factory(), input_queue_depth=16)
    bench, result = simulate_network(net, dut, net.route_writes(), ready_probability, seed)
    counters = check_against_model(net, bench, result)
    if ready_probability < 1:
        assert counters[Counter.OUTPUT_STALLS] > 0


def test_chip_neuron_cores_against_model(seed):
    """The real NeuronCore (lanes = 2), LIF profiles, everything loaded through `mem`."""
    shape = ChipShape(cores=3, neurons=8, axons=8, lanes=2, route_entries=96)
    net = Network(shape, seed, steps=20, lif=True)
    dut = Chip(shape)
    weights = net.model.cores[1].weights
    reads = []

    async def during_run(ctx, bench, phase):
        """Memory reads while the chip runs: served between steps, never disturbing the run."""
        rng = random.Random(seed)
        while phase["running"]:
            axon, neuron = rng.randrange(shape.axons), rng.randrange(shape.neurons)
            word = await bench.mem(ctx, MemorySpace.WEIGHT, 1, axon * shape.neurons + neuron)
            assert word == int(weights[axon, neuron]) & 0xFFFFFFFF
            entry = await bench.mem(ctx, MemorySpace.ROUTE_POINTER, 0, neuron)
            reads.append((word, entry, ctx.get(dut.running)))

    bench, result = simulate_network(net, dut, net.route_writes() + net.core_writes(), 0.5, seed,
                                     during_run=during_run)
    check_against_model(net, bench, result)
    assert sum(running for *_, running in reads) >= 5, "too few reads overlapped the run"


def test_late_inputs_registers_and_bad_requests():
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    net = Network(SHAPE, seed, steps=6)
    dut = Chip(SHAPE, core_factory=net.core_factory(stall=False), input_queue_depth=8)

    async def extra(ctx, bench, result):
        # past steps, a core and an axon that do not exist: dropped and counted; a future one kept
        for payload in [{"core": 0, "axon": 1, "step": 2}, {"core": 1, "axon": 0, "step": 5},
                        {"core": 3, "axon": 0, "step": 6}, {"core": 0, "axon": 16, "step": 6},
                        {"core": 0, "axon": 3, "step": 7}]:
            await bench.put(ctx, dut.inject, payload)
        await bench.put(ctx, dut.run, 1)
        await bench.wait_markers(ctx, 7, budget=3000)
        result["late"] = await bench.mem(ctx, MemorySpace.COUNTER, 0, Counter.LATE_INPUTS.value)
        result["inputs_after"] = await bench.mem(ctx, MemorySpace.COUNTER, 0, Counter.INPUT_EVENTS.value)
        result["step_after"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.STEP.value)
        # registers
        result["step_write"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.STEP.value, 9, write=True)
        result["counter_write"] = await bench.mem(ctx, MemorySpace.COUNTER, 0, 0, 9, write=True)
        result["reward_write"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.REWARD.value,
                                                 0xFFFFFF80, write=True)
        result["reward"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.REWARD.value)
        result["bad_reward"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.REWARD.value, 128, write=True)
        result["bad_learning"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, 2,
                                                 write=True)
        result["learning"] = await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.LEARNING.value)
        result["bad_core_write"] = await bench.mem(ctx, MemorySpace.WEIGHT, 3, 0, 1, write=True)
        result["bad_core_read"] = await bench.mem(ctx, MemorySpace.WEIGHT, 200, 0)
        result["bad_counter"] = await bench.mem(ctx, MemorySpace.COUNTER, 0, 12)
        # a run of 2 steps given as two run words while running: both count
        await bench.put(ctx, dut.run, 1)
        await bench.put(ctx, dut.run, 1)
        await bench.wait_markers(ctx, 9, budget=3000)
        result["inputs_final"] = await bench.mem(ctx, MemorySpace.COUNTER, 0, Counter.INPUT_EVENTS.value)

    bench, result = simulate_network(net, dut, net.route_writes(), 1.0, seed, extra)
    assert result["late"] == 4
    assert result["inputs_after"] == sum(map(len, net.inputs))
    assert result["step_after"] == 7
    assert result["step_write"] == MEM_REFUSED and result["counter_write"] == MEM_REFUSED
    assert result["reward_write"] == MEM_OK and result["reward"] == 0xFFFFFF80      # -128, sign-extended
    assert result["learning"] == 1
    assert result["bad_reward"] == MEM_REFUSED and result["bad_learning"] == MEM_REFUSED
    assert result["bad_core_write"] == MEM_REFUSED and result["bad_core_read"] == 0
    assert result["bad_counter"] == 0
    assert result["inputs_final"] == result["inputs_after"] + 1                       # the step-7 event
    markers = [index for kind, _, index in bench.out if kind == EventKind.STEP]
    assert markers == list(range(9))
