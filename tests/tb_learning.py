"""cocotb bench for the Verilated NeuronCore(learning=True) (launched by tests/test_learning_cocotb.py).

Parameters come from the environment: NF_CORE = "neurons,axons,lanes", NF_CORE_SEED, NF_STEPS.
Each test resets the core, loads a random configuration with STDP on (the generator of
tests/test_learning.py, applied to a one-core ChipModel) through ``mem``, then runs steps with
the chip-wide `learn` switch and `reward` set per step; the next step's events are offered from
the `step` pulse on (held off by the core until its learning phase is over), and ``spike_out`` is
drained with a random ready pattern. After every step the spikes (in order), every weight, every
trace and u, v, refractory, theta of every neuron (read through ``mem``) must equal the model's.
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from test_learning import PROFILE_FIELDS, STATE_FIELDS, STDP_FIELDS, LearningScenario, profile_value

from neurofabric.hdl.protocol import CoreRegister, MemorySpace
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
        dut.learn.value = 0
        dut.reward.value = 1
        dut.spike_out__ready.value = 0
        dut.mem__valid.value = 0
        dut.mem_resp__ready.value = 0
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def mem(self, space, addr, data=0, write=False, budget=200):
        response = await mem_transfer(self.dut, mem_request(space, addr, data, write), what=space.name,
                                      budget=budget)
        return to_signed32(response)

    async def load(self):
        s = self.scenario
        core = s.model.cores[0]
        N, A = s.neurons, s.axons
        writes = [(MemorySpace.WEIGHT, a * N + n, int(core.weights[a, n])) for a in range(A) for n in range(N)]
        writes.append((MemorySpace.CORE, CoreRegister.WEIGHT_EXP.value, core.weight_exp))
        writes += [(MemorySpace.NEURON, n, (int(core.bias[n]) & 0xFF_FFFF) | int(core.profile[n]) << 24)
                   for n in range(N)]
        writes += [(MemorySpace.PROFILE, p * 8 + field.value, profile_value(profile, name))
                   for p, profile in enumerate(s.profiles) for field, name in PROFILE_FIELDS.items()]
        writes += [(MemorySpace.STATE, n * 4 + field.value, int(s.initial[name][n]))
                   for n in range(N) for field, name in STATE_FIELDS.items()]
        writes += [(MemorySpace.STDP, field.value, getattr(s.stdp, field.name.lower())) for field in STDP_FIELDS]
        writes += [(MemorySpace.PLASTIC, a, int(core.plastic[a])) for a in range(A)]
        writes += [(MemorySpace.TRACE, a, int(s.initial["pre_trace"][a])) for a in range(A)]
        writes += [(MemorySpace.TRACE, A + n, int(s.initial["post_trace"][n])) for n in range(N)]
        writes.append((MemorySpace.CORE, CoreRegister.LEARNING.value, 1))
        for space, addr, data in writes:
            assert await self.mem(space, addr, data, write=True) == 0, f"write {space.name}[{addr}]"
        for space, addr, data in writes[::5]:
            got = await self.mem(space, addr)
            if space is MemorySpace.NEURON:
                got &= 0xFFFF_FFFF
            assert got == data, f"read back {space.name}[{addr}] = {got}, wrote {data}"

    async def drive(self, events, pulse, until_idle, budget, learning=False):
        """Offer `events` (from the cycle of a `step` pulse if `pulse`), drain spike_out with the
        ready pattern, until the events are taken (and the core is idle)."""
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

    async def check(self, t):
        s = self.scenario
        N, A = s.neurons, s.axons
        want = s.model.state(0)
        weights = s.model.weights(0)
        for a in range(A):
            for n in range(N):
                got = await self.mem(MemorySpace.WEIGHT, a * N + n)
                assert got == weights[a, n], f"step {t}: weight[{a}, {n}] = {got}, model {weights[a, n]}"
        for i in range(A + N):
            got = await self.mem(MemorySpace.TRACE, i)
            name, index = ("pre_trace", i) if i < A else ("post_trace", i - A)
            assert got == want[name][index], f"step {t}: {name}[{index}] = {got}, model {want[name][index]}"
        for n in range(N):
            for field, name in STATE_FIELDS.items():
                value = await self.mem(MemorySpace.STATE, n * 4 + field.value)
                assert value == want[name][n], f"step {t}: neuron {n} {name} = {value}, model {want[name][n]}"

    async def run(self):
        s = self.scenario
        rng = random.Random(s.rng.random())
        N, A, W = s.neurons, s.axons, s.neurons // s.lanes
        slowdown = 1 / max(self.ready_probability, 0.05)
        learning = 3 * W + A * (W + 2) + W * (A + 2) + 40
        budget = int(4 * slowdown * (N + 50) + 4 * (W + 2) * max(map(len, s.events)) + learning)
        await self.load()
        await self.drive(s.events[0], pulse=False, until_idle=True, budget=budget)
        spike_total = changed = 0
        for t in range(s.steps):
            self.dut.learn.value = int(s.learn[t])
            self.dut.reward.value = s.reward[t]
            s.model.learning = s.learn[t]
            s.model.set_reward(s.reward[t])
            before_weights = s.model.weights(0)
            s.model.inject(t, [(0, a) for a in s.events[t]])
            expected = [n for _, _, n in s.model.step()]
            following = s.events[t + 1] if t + 1 < s.steps else []
            early = following[:rng.randint(0, len(following))]
            late = following[len(early):]
            before = len(self.spikes)
            await self.drive(early, pulse=True, until_idle=True, budget=budget, learning=s.learn[t])
            got = self.spikes[before:]
            assert got == expected, f"step {t}: spikes {got}, model {expected}"
            spike_total += len(got)
            changed += int(np.count_nonzero(s.model.weights(0) != before_weights))
            await self.check(t)
            await self.drive(late, pulse=False, until_idle=False, budget=budget)
        self.dut._log.info(f"{s.steps} steps, {sum(map(len, s.events))} events, {spike_total} spikes, "
                           f"{changed} weight changes: all match the model")
        assert spike_total > 0, "no spikes: potentiation would not be tested"


async def run_case(dut, ready_probability, extreme, salt):
    neurons, axons, lanes = map(int, os.environ["NF_CORE"].split(","))
    seed = int(os.environ["NF_CORE_SEED"]) + salt
    steps = int(os.environ.get("NF_STEPS", "8"))
    dut._log.info(f"NeuronCore({neurons}, {axons}, {lanes}, learning=True) ready={ready_probability} "
                  f"extreme={extreme} seed={seed}")
    scenario = LearningScenario(neurons, axons, lanes, seed, steps, extreme)
    while not scenario.fires():         # nothing fires: the next seed (as the pysim tests do)
        seed += 1
        dut._log.info(f"no spikes in the model: seed={seed}")
        scenario = LearningScenario(neurons, axons, lanes, seed, steps, extreme)
    driver = Driver(dut, scenario, ready_probability, seed ^ 0x5A5A)
    await driver.reset()
    await driver.run()


@cocotb.test()
async def learning_ready_full(dut):
    await run_case(dut, 1.0, extreme=False, salt=0)


@cocotb.test()
async def learning_ready_half(dut):
    await run_case(dut, 0.5, extreme=False, salt=1)


@cocotb.test()
async def learning_ready_tenth(dut):
    await run_case(dut, 0.1, extreme=False, salt=2)


@cocotb.test()
async def learning_extremes(dut):
    await run_case(dut, 0.5, extreme=True, salt=3)
