"""cocotb bench: a multi-core network on the Verilated chip, step by step against ChipModel.

Launched by tests/test_chip_cocotb.py with NF_SHAPE = "cores,neurons,axons,lanes,route_entries",
NF_SEED, NF_STEPS, NF_READY (ready probability of ``out``), NF_QUEUE (input queue depth) and
optionally NF_REPORT (a JSON file for the figures). The network (random LIF profiles, weights,
biases; feed-forward, recurrent, self-loop, multicast and host routes) is loaded as memory
words into the model (``ChipModel.write_words``) and, the same words, through the chip's
``mem`` port. Inputs are injected in chunks that fit the queue, each chunk run with one ``run``
word; every step's host spikes (between STEP markers) must equal the model's, then the counters.
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from neurofabric.hdl.protocol import (
    DECAY_ONE,
    PROFILE_COUNT,
    ChipRegister,
    CoreRegister,
    Counter,
    EventKind,
    MemorySpace,
    ProfileField,
    RouteKind,
    StdpField,
)
from neurofabric.host.model import ChipModel, ChipShape
from neurofabric.sim.cocotb_bench import mem_request, mem_transfer

WORD = 0xFFFFFFFF


def network_words(shape, rng):
    """(space, core, addr, word) writes of a random network; words are signed Python ints."""
    writes = []
    for c in range(shape.cores):
        for a in range(shape.axons):
            for n in range(shape.neurons):
                writes.append((MemorySpace.WEIGHT, c, a * shape.neurons + n, rng.randint(-40, 110)))
        for n in range(shape.neurons):
            bias = rng.randint(-30, 60)
            writes.append((MemorySpace.NEURON, c, n, (bias & 0xFFFFFF) | rng.randrange(4) << 24))
        for p in range(PROFILE_COUNT):
            fields = {
                ProfileField.DU: rng.choice([0, 512, 2048, DECAY_ONE]),
                ProfileField.DV: rng.choice([0, 300, 1024]),
                ProfileField.THRESHOLD: rng.randint(100, 700),
                ProfileField.V_RESET: rng.randint(-50, 10),
                ProfileField.RESET_MODE: rng.randrange(2),
                ProfileField.REFRACTORY: rng.choice([0, 1, 3]),
                ProfileField.THETA_PLUS: rng.choice([0, 20]),
                ProfileField.DTHETA: rng.choice([0, 100]),
            }
            for field, value in fields.items():
                writes.append((MemorySpace.PROFILE, c, p * 8 + field.value, value))
        writes.append((MemorySpace.CORE, c, CoreRegister.WEIGHT_EXP.value, rng.choice([0, 1])))
    # routes: entries laid out in source order
    base = 0
    for c in range(shape.cores):
        for n in range(shape.neurons):
            entries = []
            if c + 1 < shape.cores and rng.random() < 0.7:
                entries.append((0, c + 1, rng.randrange(shape.axons)))                  # feed-forward
            if c == shape.cores - 1 and rng.random() < 0.5:
                entries.append((0, 0, rng.randrange(shape.axons)))                      # recurrent
            if rng.random() < 0.3:
                entries.append((0, c, rng.randrange(shape.axons)))                      # self-loop
            if rng.random() < 0.5:
                entries.append((1, 0, 0))                                               # host
            for _ in range(rng.choice([0, 0, 1, 2])):
                entries.append((0, rng.randrange(shape.cores), rng.randrange(shape.axons)))   # multicast
            entries = entries[:shape.route_entries - base]
            writes.append((MemorySpace.ROUTE_POINTER, 0, c * shape.neurons + n, base | len(entries) << 16))
            for i, (kind, core, axon) in enumerate(entries):
                writes.append((MemorySpace.ROUTE_ENTRY, 0, base + i,
                               axon | core << 16 | (RouteKind.HOST.value if kind else 0) << 30))
            base += len(entries)
    return writes





class ChipDriver:
    def __init__(self, dut, ready_probability, seed):
        self.dut = dut
        self.ready_rng = random.Random(seed)
        self.ready_probability = ready_probability
        self.out = []
        self.markers = 0

    async def mem(self, space, core, addr, data=0, write=False, budget=5000):
        return await mem_transfer(self.dut, mem_request(space, addr, data, write, core=core),
                                  what=space.name, budget=budget)

    async def put(self, prefix, payload, budget=100_000):
        valid, ready = getattr(self.dut, prefix + "__valid"), getattr(self.dut, prefix + "__ready")
        await FallingEdge(self.dut.clk)
        getattr(self.dut, prefix + "__payload").value = payload
        valid.value = 1
        for _ in range(budget):
            await ReadOnly()
            accepted = bool(ready.value)
            await FallingEdge(self.dut.clk)
            if accepted:
                valid.value = 0
                return
        raise AssertionError(f"{prefix} not accepted within {budget} cycles")

    async def collect(self):
        dut = self.dut
        falling, read_only = FallingEdge(dut.clk), ReadOnly()
        while True:
            await falling
            ready = self.ready_probability >= 1.0 or self.ready_rng.random() < self.ready_probability
            dut.out__ready.value = int(ready)
            await read_only
            if ready and dut.out__valid.value:
                event = int(dut.out__payload.value)
                kind, core, index = event >> 30, (event >> 16) & 0xFF, event & 0xFFFF
                self.out.append((kind, core, index))
                if kind == EventKind.STEP.value:
                    self.markers += 1

    async def wait_markers(self, count, budget):
        for _ in range(budget):
            if self.markers >= count:
                return
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"{self.markers} of {count} step markers within {budget} cycles")


def run_parameters():
    """(shape, seed, steps, out ready probability) from NF_SHAPE, NF_SEED, NF_STEPS, NF_READY."""
    cores, neurons, axons, lanes, route_entries = map(int, os.environ["NF_SHAPE"].split(","))
    shape = ChipShape(cores=cores, neurons=neurons, axons=axons, lanes=lanes, route_entries=route_entries)
    return shape, int(os.environ["NF_SEED"]), int(os.environ["NF_STEPS"]), float(os.environ["NF_READY"])


async def reset_chip(dut):
    """Start the clock and hold reset for 3 cycles with every input stream idle."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in ("mem__valid", "mem_resp__ready", "inject__valid", "run__valid", "out__ready"):
        getattr(dut, name).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def chip_network_against_model(dut):
    shape, seed, steps, ready_probability = run_parameters()
    queue = int(os.environ["NF_QUEUE"])
    rng = random.Random(seed)
    dut._log.info(f"seed {seed}, {steps} steps, shape {shape}, out ready {ready_probability}")

    await reset_chip(dut)

    model = ChipModel(shape)
    driver = ChipDriver(dut, ready_probability, seed)
    cocotb.start_soon(driver.collect())
    for space, core, addr, word in network_words(shape, rng):
        model.write_words(space, core, addr, [word])
        resp = await driver.mem(space, core, addr, word, write=True)
        assert resp == 0, f"write {space.name} core {core} [{addr}] = {word}: response {resp}"

    inputs = [[(rng.randrange(shape.cores), rng.randrange(shape.axons)) for _ in range(rng.randint(0, 4))]
              for _ in range(steps)]
    for t, events in enumerate(inputs):
        if events:
            model.inject(t, events)
    expected = [[] for _ in range(steps)]
    for t, core, neuron in model.run(steps):
        expected[t].append((core, neuron))

    start = get_sim_time(unit="ns")
    t = 0
    while t < steps:
        chunk, events = 0, 0
        while t + chunk < steps and (chunk == 0 or events + len(inputs[t + chunk]) <= queue):
            events += len(inputs[t + chunk])
            chunk += 1
        for s in range(t, t + chunk):
            for core, axon in inputs[s]:
                await driver.put("inject", axon | core << 16 | (s & 0xFFFF) << 24)
        await driver.put("run", chunk)
        await driver.wait_markers(t + chunk, budget=20_000 * chunk)
        t += chunk
    cycles = (get_sim_time(unit="ns") - start) / 10

    per_step, current, step = [], [], 0
    for kind, core, index in driver.out:
        if kind == EventKind.STEP.value:
            assert index == step & 0xFFFF, f"marker {index} where step {step} ended"
            per_step.append(sorted(current))
            current, step = [], step + 1
        else:
            assert kind == EventKind.SPIKE.value, f"unexpected event kind {kind}"
            current.append((core, index))
    assert not current and len(per_step) == steps, f"{len(per_step)} markers for {steps} steps"
    for s in range(steps):
        assert per_step[s] == sorted(expected[s]), f"step {s}: chip {per_step[s]} != model {sorted(expected[s])}"
    counters = {c: await driver.mem(MemorySpace.COUNTER, 0, c.value) for c in Counter}
    for c in Counter:
        if c is not Counter.OUTPUT_STALLS:
            assert counters[c] == model.counters[c], f"{c.name}: chip {counters[c]}, model {model.counters[c]}"
    assert await driver.mem(MemorySpace.CHIP, 0, ChipRegister.STEP.value) == steps
    # and the final neuron state of every core, read back through mem
    for c in range(shape.cores):
        state = model.read_words(MemorySpace.STATE, c, 0, shape.neurons * 4)
        for addr in range(shape.neurons * 4):
            got = await driver.mem(MemorySpace.STATE, c, addr)
            assert got == int(state[addr]) & WORD, f"core {c} STATE[{addr}]: chip {got}, model {state[addr]}"
    host_spikes = model.counters[Counter.HOST_SPIKES]
    routed = model.counters[Counter.ROUTED_EVENTS]
    assert host_spikes > steps // 2 and routed > steps, "the network is too quiet to test the router"
    report = {"steps": steps, "cycles": cycles, "cycles_per_step": cycles / steps,
              "host_spikes": host_spikes, "routed_events": routed, "spikes": model.counters[Counter.SPIKES],
              "input_events": model.counters[Counter.INPUT_EVENTS],
              "output_stalls": counters[Counter.OUTPUT_STALLS]}
    dut._log.info(f"report {report}")
    if os.environ.get("NF_REPORT"):
        with open(os.environ["NF_REPORT"], "w") as f:
            json.dump(report, f)


# --- learning -----------------------------------------------------------------------------------
def learning_words(shape, rng):
    """Writes that turn on STDP in every core: random STDP configuration and seed, a random
    plastic-axon mask (at least one plastic axon per core), random starting traces, core
    learning on (mixed with the network of :func:`network_words`)."""
    writes = []
    for c in range(shape.cores):
        fields = {
            StdpField.PRE_INCREMENT: rng.randint(0, 200), StdpField.POST_INCREMENT: rng.randint(0, 200),
            StdpField.PRE_DECAY: rng.choice([0, 512, 2000, DECAY_ONE]),
            StdpField.POST_DECAY: rng.choice([0, 700, 3000, DECAY_ONE]),
            StdpField.A_PLUS: rng.randint(0, 255), StdpField.A_MINUS: rng.randint(0, 255),
            StdpField.SHIFT: rng.randint(0, 12), StdpField.W_MIN: rng.randint(-128, -20),
            StdpField.W_MAX: rng.randint(60, 127), StdpField.SEED: rng.randint(1, 0xFFFF),
        }
        for field, value in fields.items():
            writes.append((MemorySpace.STDP, c, field.value, value))
        plastic = [rng.random() < 0.7 for _ in range(shape.axons)]
        plastic[rng.randrange(shape.axons)] = True
        for a, on in enumerate(plastic):
            writes.append((MemorySpace.PLASTIC, c, a, int(on)))
        for addr in range(shape.axons + shape.neurons):
            writes.append((MemorySpace.TRACE, c, addr, rng.choice([0, rng.randint(0, 255)])))
        writes.append((MemorySpace.CORE, c, CoreRegister.LEARNING.value, 1))
    return writes


def learning_schedule(steps, rng):
    """Chunks of steps and the register writes before each: reward changes (through
    ChipRegister.REWARD and through STDP REWARD of a random core, extremes included) and the
    chip-wide learning switch turned off (always for the second chunk) and on again."""
    schedule, t = [], 0
    while t < steps:
        chunk = min(steps - t, rng.randint(1, 8))
        writes = []
        roll = rng.random()
        reward = rng.choice([-128, 127, 0, 1, -1, rng.randint(-128, 127)])
        if roll < 0.4:
            writes.append((MemorySpace.CHIP, 0, ChipRegister.REWARD.value, reward))
        elif roll < 0.8:
            writes.append((MemorySpace.STDP, "any", StdpField.REWARD.value, reward))
        if len(schedule) in (1, 2):            # the second chunk never learns, the third does
            writes.append((MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, len(schedule) - 1))
        elif t > 0 and rng.random() < 0.2:
            writes.append((MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, rng.randrange(2)))
        schedule.append((t, chunk, writes))
        t += chunk
    return schedule


def learning_state(model, shape, core):
    """The learned state of `core` as read through memory: weights, traces, neuron state."""
    return {
        MemorySpace.WEIGHT: model.read_words(MemorySpace.WEIGHT, core, 0, shape.axons * shape.neurons),
        MemorySpace.TRACE: model.read_words(MemorySpace.TRACE, core, 0, shape.axons + shape.neurons),
        MemorySpace.STATE: model.read_words(MemorySpace.STATE, core, 0, 4 * shape.neurons),
    }


@cocotb.test()
async def chip_learning_against_model(dut):
    """A learning network (every core plastic, recurrent routes) with reward changes between
    chunks: every step's host spikes, then weights, traces and neuron state equal ChipModel's."""
    shape, seed, steps, ready_probability = run_parameters()
    rng = random.Random(seed)
    dut._log.info(f"seed {seed}, {steps} learning steps, shape {shape}, out ready {ready_probability}")

    await reset_chip(dut)

    model = ChipModel(shape)
    driver = ChipDriver(dut, ready_probability, seed)
    cocotb.start_soon(driver.collect())
    for space, core, addr, word in network_words(shape, rng) + learning_words(shape, rng):
        model.write_words(space, core, addr, [word])
        resp = await driver.mem(space, core, addr, word, write=True)
        assert resp == 0, f"write {space.name} core {core} [{addr}] = {word}: response {resp}"
    inputs = [[(rng.randrange(shape.cores), rng.randrange(shape.axons)) for _ in range(rng.randint(0, 4))]
              for _ in range(steps)]
    expected = [[] for _ in range(steps)]
    start = get_sim_time(unit="ns")
    for t, chunk, writes in learning_schedule(steps, rng):
        for space, core, addr, word in writes:
            core = rng.randrange(shape.cores) if core == "any" else core
            model.write_words(space, core, addr, [word])
            assert await driver.mem(space, core, addr, word, write=True) == 0
            assert await driver.mem(space, core, addr) == word & WORD
        for s in range(t, t + chunk):
            if inputs[s]:
                model.inject(s, inputs[s])
            for core, axon in inputs[s]:
                await driver.put("inject", axon | core << 16 | (s & 0xFFFF) << 24)
        for s, core, neuron in model.run(chunk):
            expected[s].append((core, neuron))
        await driver.put("run", chunk)
        await driver.wait_markers(t + chunk, budget=50_000 * chunk)
    cycles = (get_sim_time(unit="ns") - start) / 10

    per_step, current = [], []
    for kind, core, index in driver.out:
        if kind == EventKind.STEP.value:
            assert index == len(per_step) & 0xFFFF, f"marker {index} where step {len(per_step)} ended"
            per_step.append(sorted(current))
            current = []
        else:
            current.append((core, index))
    assert not current and len(per_step) == steps
    for s in range(steps):
        assert per_step[s] == sorted(expected[s]), f"step {s}: chip {per_step[s]} != model {sorted(expected[s])}"
    changed = 0
    for c in range(shape.cores):
        for space, words in learning_state(model, shape, c).items():
            for addr, word in enumerate(words):
                got = await driver.mem(space, c, addr)
                assert got == int(word) & WORD, f"core {c} {space.name}[{addr}]: chip {got}, model {word}"
    initial = ChipModel(shape)
    for space, core, addr, word in network_words(shape, random.Random(seed)):
        initial.write_words(space, core, addr, [word])
    for c in range(shape.cores):
        changed += int((model.cores[c].weights != initial.cores[c].weights).sum())
    assert changed > 0, "no weight changed: the network did not learn"
    report = {"steps": steps, "cycles": cycles, "cycles_per_step": cycles / steps, "weights_changed": changed,
              "spikes": model.counters[Counter.SPIKES], "routed_events": model.counters[Counter.ROUTED_EVENTS]}
    dut._log.info(f"report {report}")
    if os.environ.get("NF_REPORT"):
        with open(os.environ["NF_REPORT"], "w") as f:
            json.dump(report, f)
