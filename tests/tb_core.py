"""cocotb bench for the Verilated NeuronCore (launched by tests/test_core_cocotb.py).

Parameters come from the environment: NF_CORE = "neurons,axons,lanes", NF_CORE_SEED, NF_STEPS.
Each test resets the core, loads a random configuration and initial state (the same generator as
tests/test_core.py, applied to a one-core ChipModel) through ``mem``, then runs steps: events of
the next step are offered while the current sweep runs, some only just before the next ``step``
pulse (still integrating when it comes); ``spike_out`` is drained with a random ready pattern.
After every step the spikes (in order) and u, v, refractory, theta of every neuron (read through
``mem``) must equal the model's, bit for bit.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from test_core import PROFILE_FIELDS, STATE_FIELDS, Scenario

from neurofabric.hdl.protocol import CoreRegister, MemorySpace
from neurofabric.host.compiler import profile_words
from neurofabric.sim.cocotb_bench import mem_request, mem_transfer, to_signed32


class Driver:
    def __init__(self, dut, scenario, ready_probability, seed):
        self.dut, self.scenario = dut, scenario
        self.ready_probability = ready_probability
        self.ready_rng = random.Random(seed)
        self.spikes = []

    async def reset(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        dut.rst.value = 1
        dut.axon_in__valid.value = 0
        dut.step.value = 0
        dut.spike_out__ready.value = 0
        dut.mem__valid.value = 0
        dut.mem_resp__ready.value = 0
        self.idle_inputs()
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    def idle_inputs(self):
        """Inputs a variant of the core adds, at their reset values."""

    async def mem(self, space, addr, data=0, write=False, budget=200):
        response = await mem_transfer(self.dut, mem_request(space, addr, data, write), what=space.name,
                                      budget=budget)
        return to_signed32(response)

    #: every READBACK_STRIDE-th write is read back after loading
    READBACK_STRIDE = 7

    def writes(self):
        """The (space, addr, data) writes that load the scenario's configuration and state."""
        s = self.scenario
        core = s.model.cores[0]
        N, A = s.neurons, s.axons
        writes = [(MemorySpace.WEIGHT, a * N + n, int(core.weights[a, n]))
                  for a in range(A) for n in range(N)]
        writes.append((MemorySpace.CORE, CoreRegister.WEIGHT_EXP.value, core.weight_exp))
        writes += [(MemorySpace.NEURON, n, (int(core.bias[n]) & 0xFF_FFFF) | int(core.profile[n]) << 24)
                   for n in range(N)]
        writes += [(MemorySpace.PROFILE, p * 8 + field.value, int(profile_words(profile)[field.value]))
                   for p, profile in enumerate(s.profiles) for field in PROFILE_FIELDS]
        writes += [(MemorySpace.STATE, n * 4 + field.value, int(s.initial[name][n]))
                   for n in range(N) for field, name in STATE_FIELDS.items()]
        return writes

    async def load(self):
        writes = self.writes()
        for space, addr, data in writes:
            assert await self.mem(space, addr, data, write=True) == 0, f"write {space.name}[{addr}]"
        for space, addr, data in writes[::self.READBACK_STRIDE]:
            got = await self.mem(space, addr)
            if space is MemorySpace.NEURON:
                got &= 0xFFFF_FFFF
            assert got == data, f"read back {space.name}[{addr}] = {got}, wrote {data}"

    async def drive(self, events, pulse, until_idle, budget, learning=False):
        """Offer `events` (from the cycle of a `step` pulse if `pulse`), drain spike_out with the
        ready pattern, until the events are taken (and the core is idle). With `learning` (a
        step that learns), no event may be accepted with the pulse."""
        dut = self.dut
        queue = list(events)
        for cycle in range(budget):
            await FallingEdge(dut.clk)
            pulsing = pulse and cycle == 0
            dut.step.value = int(pulsing)
            offering = bool(queue)
            dut.axon_in__valid.value = int(offering)
            if offering:
                dut.axon_in__payload.value = queue[0]
            ready = self.ready_probability >= 1.0 or self.ready_rng.random() < self.ready_probability
            dut.spike_out__ready.value = int(ready)
            await ReadOnly()
            if offering and int(dut.axon_in__ready.value):
                assert not (pulsing and learning), "an event was accepted with a learning step's pulse"
                queue.pop(0)
            if ready and int(dut.spike_out__valid.value):
                self.spikes.append(int(dut.spike_out__payload.value))
            if not offering and not pulsing and (not until_idle or not int(dut.busy.value)):
                break
        else:
            raise AssertionError(f"{len(queue)} events left / still busy after {budget} cycles")
        await FallingEdge(dut.clk)
        dut.axon_in__valid.value = 0
        dut.step.value = 0
        dut.spike_out__ready.value = 0

    def extra_cycles(self):
        """Cycles a step may take beyond the sweep and the integration (a variant's extra phase)."""
        return 0

    def begin_step(self, t):
        """Before step `t` runs on the model and the core; returns whether the step learns."""
        return False

    def end_step(self, t):
        """After step `t`'s spikes matched."""

    async def check(self, t):
        """After step `t`: u, v, refractory and theta of every neuron equal the model's."""
        s = self.scenario
        want = s.model.state(0)
        for n in range(s.neurons):
            for field, name in STATE_FIELDS.items():
                value = await self.mem(MemorySpace.STATE, n * 4 + field.value)
                assert value == want[name][n], f"step {t}: neuron {n} {name} = {value}, model {want[name][n]}"

    def summary(self):
        return ""

    #: the failure message when the whole run fired no spike
    NO_SPIKES = "no spikes: the scenario would not test firing"

    async def run(self):
        s = self.scenario
        rng = random.Random(s.rng.random())
        N = s.neurons
        # cycles: an event takes neurons/lanes, a sweep neurons + ~10 (longer under back-pressure)
        slowdown = 1 / max(self.ready_probability, 0.05)
        budget = int(4 * slowdown * (N + 50) + 4 * (N // s.lanes + 2) * max(map(len, s.events))
                     + self.extra_cycles())
        await self.load()
        await self.drive(s.events[0], pulse=False, until_idle=True, budget=budget)
        spike_total = 0
        for t in range(s.steps):
            learning = self.begin_step(t)
            s.model.inject(t, [(0, a) for a in s.events[t]])
            expected = [n for _, _, n in s.model.step()]
            following = s.events[t + 1] if t + 1 < s.steps else []
            early = following[:rng.randint(0, len(following))]
            late = following[len(early):]
            before = len(self.spikes)
            await self.drive(early, pulse=True, until_idle=True, budget=budget, learning=bool(learning))
            got = self.spikes[before:]
            assert got == expected, f"step {t}: spikes {got}, model {expected}"
            spike_total += len(got)
            self.end_step(t)
            await self.check(t)
            await self.drive(late, pulse=False, until_idle=False, budget=budget)
        self.dut._log.info(f"{s.steps} steps, {sum(map(len, s.events))} events, {spike_total} spikes"
                           f"{self.summary()}: all match the model")
        assert spike_total > 0, self.NO_SPIKES


async def run_case(dut, ready_probability, extreme, salt, scenario_class=Scenario, driver_class=Driver,
                   default_steps=12, label=""):
    neurons, axons, lanes = map(int, os.environ["NF_CORE"].split(","))
    seed = int(os.environ["NF_CORE_SEED"]) + salt
    steps = int(os.environ.get("NF_STEPS", str(default_steps)))
    dut._log.info(f"NeuronCore({neurons}, {axons}, {lanes}{label}) ready={ready_probability} "
                  f"extreme={extreme} seed={seed}")
    scenario = scenario_class(neurons, axons, lanes, seed, steps, extreme)
    while not scenario.fires():         # nothing fires: the next seed (as the pysim tests do)
        seed += 1
        dut._log.info(f"no spikes in the model: seed={seed}")
        scenario = scenario_class(neurons, axons, lanes, seed, steps, extreme)
    driver = driver_class(dut, scenario, ready_probability, seed ^ 0x5A5A)
    await driver.reset()
    await driver.run()


@cocotb.test()
async def core_ready_full(dut):
    await run_case(dut, 1.0, extreme=False, salt=0)


@cocotb.test()
async def core_ready_half(dut):
    await run_case(dut, 0.5, extreme=False, salt=1)


@cocotb.test()
async def core_ready_tenth(dut):
    await run_case(dut, 0.1, extreme=False, salt=2)


@cocotb.test()
async def core_extremes(dut):
    await run_case(dut, 0.5, extreme=True, salt=3)
