"""cocotb bench for the Verilated NeuronCore(learning=True) (launched by tests/test_learning_cocotb.py).

Parameters come from the environment: NF_CORE = "neurons,axons,lanes", NF_CORE_SEED, NF_STEPS.
Each test resets the core, loads a random configuration with STDP on (the generator of
tests/test_learning.py, applied to a one-core ChipModel) through ``mem``, then runs steps with
the chip-wide `learn` switch and `reward` set per step; the next step's events are offered from
the `step` pulse on (held off by the core until its learning phase is over), and ``spike_out`` is
drained with a random ready pattern. After every step the spikes (in order), every weight, every
trace and u, v, refractory, theta of every neuron (read through ``mem``) must equal the model's.
The driver is tests/tb_core.py's, extended (``LearningDriver``).
"""

import cocotb
import numpy as np
from tb_core import Driver, run_case
from test_learning import STDP_FIELDS, LearningScenario

from neurofabric.hdl.protocol import CoreRegister, MemorySpace


class LearningDriver(Driver):
    """tb_core's Driver with the learning core's inputs, STDP configuration and checks."""

    READBACK_STRIDE = 5
    NO_SPIKES = "no spikes: potentiation would not be tested"

    def __init__(self, dut, scenario, ready_probability, seed):
        super().__init__(dut, scenario, ready_probability, seed)
        self.changed = 0
        self.before_weights = None

    def idle_inputs(self):
        self.dut.learn.value = 0
        self.dut.reward.value = 1

    def writes(self):
        s = self.scenario
        core = s.model.cores[0]
        N, A = s.neurons, s.axons
        writes = super().writes()
        writes += [(MemorySpace.STDP, field.value, getattr(s.stdp, field.name.lower())) for field in STDP_FIELDS]
        writes += [(MemorySpace.PLASTIC, a, int(core.plastic[a])) for a in range(A)]
        writes += [(MemorySpace.TRACE, a, int(s.initial["pre_trace"][a])) for a in range(A)]
        writes += [(MemorySpace.TRACE, A + n, int(s.initial["post_trace"][n])) for n in range(N)]
        writes.append((MemorySpace.CORE, CoreRegister.LEARNING.value, 1))
        return writes

    def extra_cycles(self):
        s = self.scenario
        A, W = s.axons, s.neurons // s.lanes
        return 3 * W + A * (W + 2) + W * (A + 2) + 40

    def begin_step(self, t):
        s = self.scenario
        self.dut.learn.value = int(s.learn[t])
        self.dut.reward.value = s.reward[t]
        s.model.learning = s.learn[t]
        s.model.set_reward(s.reward[t])
        self.before_weights = s.model.weights(0)
        return s.learn[t]

    def end_step(self, t):
        self.changed += int(np.count_nonzero(self.scenario.model.weights(0) != self.before_weights))

    async def check(self, t):
        """Every weight and trace, then (tb_core) every neuron's state, equal the model's."""
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
        await super().check(t)

    def summary(self):
        return f", {self.changed} weight changes"


def learning_case(dut, ready_probability, extreme, salt):
    return run_case(dut, ready_probability, extreme, salt, scenario_class=LearningScenario,
                    driver_class=LearningDriver, default_steps=8, label=", learning=True")


@cocotb.test()
async def learning_ready_full(dut):
    await learning_case(dut, 1.0, extreme=False, salt=0)


@cocotb.test()
async def learning_ready_half(dut):
    await learning_case(dut, 0.5, extreme=False, salt=1)


@cocotb.test()
async def learning_ready_tenth(dut):
    await learning_case(dut, 0.1, extreme=False, salt=2)


@cocotb.test()
async def learning_extremes(dut):
    await learning_case(dut, 0.5, extreme=True, salt=3)
