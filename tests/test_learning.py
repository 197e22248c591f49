"""On-chip STDP of NeuronCore(learning=True) (hdl/core.py) against the bit-exact model.

Every test loads the same random (or extreme) configuration, initial state, STDP configuration,
plastic mask and traces into a one-core ChipModel and into the core through its `mem` port, then
runs steps with random event streams and learning on (with the chip-wide switch and the reward
changed between some steps). The next step's events are offered right after each `step` pulse
(the core holds them off until its learning phase is over). After every step the spikes (in
order), every weight, every pre- and post-trace and u, v, refractory, theta of every neuron,
read back through `mem`, must equal the model's, bit for bit. Seeds are printed; rerun one with
NEUROFABRIC_SEED=<seed>.

The STDP window test measures the weight change of one synapse for a single pre/post pair at
offsets -20..+20 steps on the simulated core and compares it with ``A exp(-|dt| / tau)``.
"""

import copy
import math
import os
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.core import NeuronCore, lfsr_seed_value
from neurofabric.hdl.protocol import (
    DECAY_ONE,
    PROFILE_COUNT,
    CoreRegister,
    MemorySpace,
    ProfileField,
    ResetMode,
    StateField,
    StdpField,
)
from neurofabric.host.compiler import profile_words
from neurofabric.host.model import ChipModel, ChipShape, NeuronProfile, Route, StdpConfig, lfsr_seed
from neurofabric.sim.cocotb_bench import to_signed32
from neurofabric.sim.streams import SimulationTimeout, ready_pattern, stream_get, stream_put

PROFILE_FIELDS = {
    ProfileField.DU: "du", ProfileField.DV: "dv", ProfileField.THRESHOLD: "threshold",
    ProfileField.V_RESET: "v_reset", ProfileField.RESET_MODE: "reset_mode",
    ProfileField.REFRACTORY: "refractory", ProfileField.THETA_PLUS: "theta_plus",
    ProfileField.DTHETA: "dtheta",
}
STATE_FIELDS = {StateField.U: "u", StateField.V: "v", StateField.REFRACTORY: "refractory",
                StateField.THETA: "theta"}
STDP_FIELDS = [f for f in StdpField if f is not StdpField.REWARD]


def base_seed():
    return int(os.environ.get("NEUROFABRIC_SEED", random.randrange(1 << 32)))


def random_stdp(rng, extreme):
    def pick(special, lo, hi):
        return rng.choice(special) if extreme and rng.random() < 0.6 else rng.randint(lo, hi)
    if extreme:
        w_min, w_max = rng.choice([(-128, 127), (0, 0), (-1, 3), (5, 5), (-128, -100), (100, 127)])
    else:
        w_min, w_max = sorted(rng.sample(range(-128, 128), 2))
        w_min, w_max = rng.choice([(w_min, w_max), (-128, 127)])
    return StdpConfig(
        pre_increment=pick([0, 1, 255], 0, 255), post_increment=pick([0, 1, 255], 0, 255),
        pre_decay=pick([0, 1, DECAY_ONE], 0, DECAY_ONE), post_decay=pick([0, 1, DECAY_ONE], 0, DECAY_ONE),
        a_plus=pick([0, 1, 255], 0, 255), a_minus=pick([0, 1, 255], 0, 255),
        shift=pick([0, 15], 0, 15), w_min=w_min, w_max=w_max, seed=pick([0, 1, 0xFFFF], 0, 0xFFFF))


class LearningScenario:
    """A random core with learning on, applied to a one-core model; the steps' events, chip
    learning switch and reward."""

    def __init__(self, neurons, axons, lanes, seed, steps, extreme=False):
        rng = self.rng = random.Random(seed)
        nprng = np.random.default_rng(seed)
        self.neurons, self.axons, self.lanes, self.steps = neurons, axons, lanes, steps
        self.model = model = ChipModel(ChipShape(cores=1, neurons=neurons, axons=axons, lanes=lanes))
        model.set_weights(0, nprng.integers(-128, 128, size=(axons, neurons)), rng.choice([0, 0, 1, 2]))
        self.profiles = [NeuronProfile(du=rng.randint(0, DECAY_ONE), dv=rng.randint(0, DECAY_ONE),
                                       threshold=rng.randint(0, 400), v_reset=rng.randint(-100, 50),
                                       reset_mode=rng.choice(list(ResetMode)), refractory=rng.choice([0, 0, 1, 2]),
                                       theta_plus=rng.choice([0, 0, 20]), dtheta=rng.randint(0, DECAY_ONE))
                         for _ in range(PROFILE_COUNT)]
        model.set_profiles(0, self.profiles)
        model.set_neurons(0, bias=nprng.integers(-60, 60, size=neurons),
                          profile=nprng.integers(0, PROFILE_COUNT, size=neurons))
        model.set_routes({(0, n): [Route(host=True)] for n in range(neurons)})
        self.stdp = random_stdp(rng, extreme)
        plastic = nprng.random(axons) < rng.choice([0.5, 0.8, 1.0])
        model.set_stdp(0, self.stdp, plastic=plastic)
        core = model.cores[0]
        core.pre_trace[:] = nprng.choice([0, 1, 100, 255], size=axons) if extreme else \
            nprng.integers(0, 256, size=axons)
        core.post_trace[:] = nprng.choice([0, 1, 100, 255], size=neurons) if extreme else \
            nprng.integers(0, 256, size=neurons)
        core.u[:] = nprng.integers(-300, 300, size=neurons)
        core.v[:] = nprng.integers(-300, 300, size=neurons)
        self.initial = {name: getattr(core, name).copy()
                        for name in ("u", "v", "refractory", "theta", "pre_trace", "post_trace")}
        self.events, self.learn, self.reward = [], [], []
        rewards = [-128, -1, 0, 1, 127] if extreme else [1, 1, 1, 2, -1, 0, rng.randint(-128, 127)]
        for t in range(steps):
            kind = rng.random()
            if kind < 0.15:
                events = []
            elif kind < 0.3:
                events = [rng.randrange(axons)] * rng.randint(2, 6)
            else:
                events = [rng.randrange(axons) for _ in range(rng.randint(1, 2 * axons))]
            self.events.append(events)
            self.learn.append(t == 0 or rng.random() < 0.85)
            self.reward.append(1 if t == 0 else rng.choice(rewards))

    def fires(self):
        """Whether any neuron fires in the model over this scenario (run on a copy)."""
        model = copy.deepcopy(self.model)
        spikes = 0
        for t in range(self.steps):
            model.learning = self.learn[t]
            model.set_reward(self.reward[t])
            model.inject(t, [(0, a) for a in self.events[t]])
            spikes += len(model.step())
        return spikes > 0


class LearningBench:
    """Drives a NeuronCore(learning=True) through its ports; every wait has a cycle budget."""

    def __init__(self, dut, scenario):
        self.dut, self.scenario = dut, scenario
        self.spikes = []
        s = scenario
        words = s.neurons // s.lanes
        learning = 3 * words + s.axons * (words + 2) + words * (s.axons + 2) + 40
        self.budget = 20 * (s.neurons + 20) + learning

    async def mem(self, ctx, space, addr, data=0, write=False):
        await stream_put(ctx, self.dut.mem, {"addr": addr, "data": data & 0xFFFF_FFFF, "mem": space,
                                             "core": 0, "write": int(write)}, budget=self.budget)
        return await stream_get(ctx, self.dut.mem_resp, budget=20)

    async def write(self, ctx, space, addr, data):
        response = await self.mem(ctx, space, addr, data, write=True)
        assert response == 0, f"write to {space.name}[{addr}] answered {response:#x}, expected 0"

    async def read(self, ctx, space, addr):
        return to_signed32(await self.mem(ctx, space, addr))

    async def load(self, ctx):
        s = self.scenario
        core = s.model.cores[0]
        N, A = s.neurons, s.axons
        for a in range(A):
            for n in range(N):
                await self.write(ctx, MemorySpace.WEIGHT, a * N + n, int(core.weights[a, n]))
        await self.write(ctx, MemorySpace.CORE, CoreRegister.WEIGHT_EXP.value, core.weight_exp)
        for n in range(N):
            await self.write(ctx, MemorySpace.NEURON, n, (int(core.bias[n]) & 0xFF_FFFF) | int(core.profile[n]) << 24)
        for p, profile in enumerate(s.profiles):
            for field in PROFILE_FIELDS:
                await self.write(ctx, MemorySpace.PROFILE, p * 8 + field.value, int(profile_words(profile)[field.value]))
        for n in range(N):
            for field, name in STATE_FIELDS.items():
                await self.write(ctx, MemorySpace.STATE, n * 4 + field.value, int(s.initial[name][n]))
        for field in STDP_FIELDS:
            await self.write(ctx, MemorySpace.STDP, field.value, getattr(s.stdp, field.name.lower()))
        for a in range(A):
            await self.write(ctx, MemorySpace.PLASTIC, a, int(core.plastic[a]))
            await self.write(ctx, MemorySpace.TRACE, a, int(s.initial["pre_trace"][a]))
        for n in range(N):
            await self.write(ctx, MemorySpace.TRACE, A + n, int(s.initial["post_trace"][n]))
        await self.write(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value, 1)
        for field in STDP_FIELDS:
            got = await self.read(ctx, MemorySpace.STDP, field.value)
            want = getattr(s.stdp, field.name.lower())
            assert got == want, f"STDP {field.name} read {got}, wrote {want}"
        assert await self.read(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value) == 1
        for a in range(A):
            assert await self.read(ctx, MemorySpace.PLASTIC, a) == int(core.plastic[a])

    async def send(self, ctx, axons):
        for axon in axons:
            await stream_put(ctx, self.dut.axon_in, axon, budget=self.budget)

    async def pulse_step(self, ctx, with_event=None):
        ctx.set(self.dut.step, 1)
        if with_event is not None:
            ctx.set(self.dut.axon_in.payload, with_event)
            ctx.set(self.dut.axon_in.valid, 1)
        _, _, ready = await ctx.tick().sample(self.dut.axon_in.ready)
        ctx.set(self.dut.step, 0)
        if with_event is not None:
            ctx.set(self.dut.axon_in.valid, 0)
            if not ready:
                await self.send(ctx, [with_event])
            return ready
        return False

    async def wait_idle(self, ctx):
        for _ in range(self.budget):
            if not ctx.get(self.dut.busy):
                return
            await ctx.tick()
        raise SimulationTimeout(f"core still busy after {self.budget} cycles")

    async def check(self, ctx, t):
        s = self.scenario
        N, A = s.neurons, s.axons
        want = s.model.state(0)
        weights = s.model.weights(0)
        for a in range(A):
            for n in range(N):
                got = await self.read(ctx, MemorySpace.WEIGHT, a * N + n)
                assert got == weights[a, n], f"step {t}: weight[{a}, {n}] = {got}, model {weights[a, n]}"
        for a in range(A):
            got = await self.read(ctx, MemorySpace.TRACE, a)
            assert got == want["pre_trace"][a], f"step {t}: pre_trace[{a}] = {got}, model {want['pre_trace'][a]}"
        for n in range(N):
            got = await self.read(ctx, MemorySpace.TRACE, A + n)
            assert got == want["post_trace"][n], \
                f"step {t}: post_trace[{n}] = {got}, model {want['post_trace'][n]}"
            for field, name in STATE_FIELDS.items():
                got = await self.read(ctx, MemorySpace.STATE, n * 4 + field.value)
                assert got == want[name][n], f"step {t}: neuron {n} {name} = {got}, model {want[name][n]}"

    def collector(self, ready_probability, seed):
        async def collect(ctx):
            pattern = ready_pattern(ready_probability, seed)
            while True:
                ready = next(pattern)
                ctx.set(self.dut.spike_out.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(self.dut.spike_out.valid, self.dut.spike_out.payload)
                if ready and valid:
                    self.spikes.append(int(payload))
        return collect

    async def run(self, ctx):
        s = self.scenario
        rng = random.Random(s.rng.random())
        await self.load(ctx)
        await self.send(ctx, s.events[0])
        self.stats = {"spikes": 0, "changed": 0, "learned_steps": 0}
        for t in range(s.steps):
            ctx.set(self.dut.learn, s.learn[t])
            ctx.set(self.dut.reward, s.reward[t])
            s.model.learning = s.learn[t]
            s.model.set_reward(s.reward[t])
            before_weights = s.model.weights(0)
            s.model.inject(t, [(0, a) for a in s.events[t]])
            expected = [n for _, _, n in s.model.step()]
            following = s.events[t + 1] if t + 1 < s.steps else []
            early = following[:rng.randint(0, len(following))]
            late = following[len(early):]
            first = early.pop(0) if early and rng.random() < 0.5 else None
            before = len(self.spikes)
            accepted_with_pulse = await self.pulse_step(ctx, with_event=first)
            assert not (accepted_with_pulse and s.learn[t]), \
                f"step {t}: an event was accepted with the step pulse of a learning step"
            await self.send(ctx, early)
            await self.wait_idle(ctx)
            got = self.spikes[before:]
            assert got == expected, f"step {t}: spikes {got}, model {expected}"
            await self.check(ctx, t)
            self.stats["spikes"] += len(got)
            self.stats["changed"] += int(np.count_nonzero(s.model.weights(0) != before_weights))
            self.stats["learned_steps"] += int(s.learn[t])
            await self.send(ctx, late)


def run_scenario(neurons, axons, lanes, steps, ready_probability, extreme=False, seed=None):
    seed = base_seed() if seed is None else seed
    print(f"NeuronCore({neurons}, {axons}, {lanes}, learning=True) ready={ready_probability} "
          f"extreme={extreme}: NEUROFABRIC_SEED={seed}")
    scenario = LearningScenario(neurons, axons, lanes, seed, steps, extreme)
    while not scenario.fires():
        # a scenario in which nothing fires never exercises potentiation: the next seed
        seed += 1
        print(f"  no spikes in the model: NEUROFABRIC_SEED={seed}")
        scenario = LearningScenario(neurons, axons, lanes, seed, steps, extreme)
    print(f"  {scenario.stdp}, rewards {scenario.reward}, learn {scenario.learn}")
    dut = NeuronCore(neurons, axons, lanes, learning=True)
    bench = LearningBench(dut, scenario)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench.collector(ready_probability, seed + 1), background=True)
    sim.add_testbench(bench.run)
    sim.run()
    print(f"  {steps} steps: {bench.stats}: all match the model")
    return bench.stats


# --- tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("neurons", "axons", "lanes", "ready"), [
    (16, 6, 4, 1.0),        # 4 words per row
    (8, 5, 8, 0.5),         # one word per row
    (12, 7, 2, 0.1),        # 6 words, odd axon count, heavy back-pressure
    (8, 4, 1, 1.0),         # one lane
])
def test_random_learning_against_model(neurons, axons, lanes, ready):
    stats = run_scenario(neurons, axons, lanes, steps=8, ready_probability=ready)
    assert stats["spikes"] > 0, "no spikes: potentiation was not exercised"


@pytest.mark.parametrize(("neurons", "axons", "lanes", "ready"), [
    (8, 6, 4, 0.5),
    (6, 3, 2, 1.0),
])
def test_extreme_learning_against_model(neurons, axons, lanes, ready):
    """Shift 0 and 15, amplitudes 0 and 255, tight and degenerate bounds, reward -128..127."""
    stats = run_scenario(neurons, axons, lanes, steps=8, ready_probability=ready, extreme=True)
    assert stats["spikes"] > 0, "no spikes: potentiation was not exercised"


def test_learning_changes_weights():
    """The comparison above is not vacuous: a default scenario does change weights."""
    stats = run_scenario(8, 4, 4, steps=6, ready_probability=1.0, seed=12345)
    assert stats["changed"] > 0 and stats["learned_steps"] > 0


def test_reset_state_is_the_model_default():
    """After reset: StdpConfig() defaults, learning off, plastic 0, traces 0 (as a fresh model),
    and the LFSR seeds of lfsr_seed(1, lane)."""
    neurons, axons, lanes = 8, 3, 4
    model = ChipModel(ChipShape(cores=1, neurons=neurons, axons=axons, lanes=lanes))
    dut = NeuronCore(neurons, axons, lanes, learning=True)
    bench = LearningBench(dut, LearningScenario(neurons, axons, lanes, seed=1, steps=1))
    for lane in range(lanes):
        assert lfsr_seed_value(1, lane) == lfsr_seed(1, lane)
    for seed in (0, 1, 0x61C9, 0xFFFF):
        assert all(lfsr_seed_value(seed, lane) == lfsr_seed(seed, lane) for lane in range(64))

    async def run(ctx):
        ctx.set(dut.reward, -5)
        for field in StdpField:
            got = await bench.read(ctx, MemorySpace.STDP, field.value)
            want = -5 if field is StdpField.REWARD else model.read_words(MemorySpace.STDP, 0, field.value, 1)[0]
            assert got == want, f"STDP {field.name} = {got} after reset, model {want}"
        got = await bench.read(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value)
        assert got == model.read_words(MemorySpace.CORE, 0, CoreRegister.LEARNING.value, 1)[0] == 0
        for a in range(axons):
            assert await bench.read(ctx, MemorySpace.PLASTIC, a) == 0
        for i in range(axons + neurons):
            assert await bench.read(ctx, MemorySpace.TRACE, i) == 0
        # out of range: decays above 4096 are stored as 4096 (as du), others truncated
        await bench.write(ctx, MemorySpace.STDP, StdpField.PRE_DECAY.value, 5000)
        assert await bench.read(ctx, MemorySpace.STDP, StdpField.PRE_DECAY.value) == DECAY_ONE
        await bench.write(ctx, MemorySpace.STDP, StdpField.A_PLUS.value, 0x1FF)
        assert await bench.read(ctx, MemorySpace.STDP, StdpField.A_PLUS.value) == 0xFF
        await bench.write(ctx, MemorySpace.TRACE, axons + neurons, 7)       # beyond TRACE
        assert await bench.read(ctx, MemorySpace.TRACE, axons + neurons) == 0
        await bench.write(ctx, MemorySpace.TRACE, axons + 5, 0x1AB)
        assert await bench.read(ctx, MemorySpace.TRACE, axons + 5) == 0xAB
        assert await bench.read(ctx, MemorySpace.TRACE, axons + 4) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(run)
    sim.run()


# --- the STDP window ---------------------------------------------------------------------------
WINDOW = StdpConfig(pre_increment=128, post_increment=128, pre_decay=410, post_decay=410,
                    a_plus=64, a_minus=48, shift=8, seed=7)
WINDOW_OFFSETS = range(-20, 21)
#: window network: neuron 0 (lane 0) is post; axon 0 (plastic, weight 0) is pre; axon 1
#: (not plastic, weight 127) makes neuron 0 fire in exactly the steps it has an event
WINDOW_SHAPE = (4, 2, 2)


def window_expected(config, dt):
    """``A exp(-|dt| / tau)`` of the configured parameters, in weight LSBs (dt = t_post - t_pre)."""
    if dt >= 0:
        amplitude, decay_ = config.a_plus * config.pre_increment / 2 ** config.shift, config.pre_decay
    else:
        amplitude, decay_ = -config.a_minus * config.post_increment / 2 ** config.shift, config.post_decay
    tau = -1 / math.log(1 - decay_ / DECAY_ONE)
    return amplitude * math.exp(-abs(dt) / tau)


def window_tolerance(config, dt):
    """Quantisation bound: every trace decay rounds toward zero (losing < 1 trace unit per step,
    at most 1 / (1 - alpha) in total), and stochastic rounding moves dw by < 1 LSB."""
    a, decay_ = (config.a_plus, config.pre_decay) if dt >= 0 else (config.a_minus, config.post_decay)
    trace_loss = min(abs(dt), DECAY_ONE / decay_)
    return a * trace_loss / 2 ** config.shift + 1


def window_trials():
    """(dt, per-step events of axon 0 and 1) for each offset: pre at 0 and post at dt, or post
    at 0 and pre at -dt."""
    for dt in WINDOW_OFFSETS:
        t_pre, t_post = (0, dt) if dt >= 0 else (-dt, 0)
        steps = max(t_pre, t_post) + 1
        yield dt, [[a for a, when in ((0, t_pre), (1, t_post)) if when == t] for t in range(steps)]


def measure_window(config=WINDOW):
    """Run every trial on the simulated core (Amaranth simulator) and on the model; return
    {dt: (hardware dw, model dw)} and the cycles spent in learning phases and synapses visited."""
    neurons, axons, lanes = WINDOW_SHAPE
    model = ChipModel(ChipShape(cores=1, neurons=neurons, axons=axons, lanes=lanes))
    weights = np.zeros((axons, neurons), dtype=np.int64)
    weights[1, 0] = 127
    model.set_weights(0, weights)
    model.set_profiles(0, [NeuronProfile(du=DECAY_ONE, dv=DECAY_ONE, threshold=100)] * PROFILE_COUNT)
    model.set_stdp(0, config, plastic=[1, 0])
    dut = NeuronCore(neurons, axons, lanes, learning=True)
    scenario = LearningScenario(neurons, axons, lanes, seed=0, steps=1)
    bench = LearningBench(dut, scenario)
    results = {}

    async def run(ctx):
        ctx.set(dut.learn, 1)
        ctx.set(dut.reward, 1)
        ctx.set(dut.spike_out.ready, 1)
        await bench.write(ctx, MemorySpace.WEIGHT, 1 * neurons + 0, 127)
        for p in range(PROFILE_COUNT):
            for field, value in ((ProfileField.DU, DECAY_ONE), (ProfileField.DV, DECAY_ONE),
                                 (ProfileField.THRESHOLD, 100)):
                await bench.write(ctx, MemorySpace.PROFILE, p * 8 + field.value, value)
        for field in STDP_FIELDS:
            await bench.write(ctx, MemorySpace.STDP, field.value, getattr(config, field.name.lower()))
        await bench.write(ctx, MemorySpace.PLASTIC, 0, 1)
        await bench.write(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value, 1)
        for dt, trial in window_trials():
            # a fresh pair: traces and the plastic weight back to 0 (the LFSRs run on)
            for i in (0, 1, axons + 0):
                await bench.write(ctx, MemorySpace.TRACE, i, 0)
            await bench.write(ctx, MemorySpace.WEIGHT, 0, 0)
            core = model.cores[0]
            core.pre_trace[:], core.post_trace[:], core.weights[0, 0] = 0, 0, 0
            for events in trial:
                model.inject(model.step_count, [(0, a) for a in events])
                model.step()
                await bench.send(ctx, events)
                await bench.pulse_step(ctx)
                await bench.wait_idle(ctx)
            results[dt] = (await bench.read(ctx, MemorySpace.WEIGHT, 0), int(model.weights(0)[0, 0]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(run)
    sim.run()
    return results


def plot_window(results, config, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dts = sorted(results)
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for side, fine in enumerate((np.linspace(min(dts), -1, 400), np.linspace(0, max(dts), 400))):
        axes.plot(fine, [window_expected(config, x) for x in fine], color="0.6",
                  label=r"$A\,e^{-|\Delta t|/\tau}$ (configured)" if side else None)
    axes.plot(dts, [results[dt][0] for dt in dts], "o", color="C0", label="NeuronCore (simulated)")
    axes.axhline(0, color="0.85", linewidth=0.8)
    axes.set_xlabel(r"$\Delta t = t_\mathrm{post} - t_\mathrm{pre}$ (steps)")
    axes.set_ylabel("weight change (LSB)")
    axes.set_title(f"STDP window: a+={config.a_plus}, a-={config.a_minus}, increments "
                   f"{config.pre_increment}, decay {config.pre_decay}/4096, shift {config.shift}", fontsize=8)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def test_stdp_window(tmp_path):
    results = measure_window()
    worst = 0.0
    for dt, (hardware, model) in sorted(results.items()):
        assert hardware == model, f"dt={dt}: hardware dw {hardware}, model {model}"
        expected = window_expected(WINDOW, dt)
        error = abs(hardware - expected)
        worst = max(worst, error)
        assert error <= window_tolerance(WINDOW, dt), \
            f"dt={dt}: dw {hardware}, A exp(-|dt|/tau) = {expected:.2f}, beyond quantisation"
        if abs(expected) >= 2:
            assert np.sign(hardware) == np.sign(expected), f"dt={dt}: dw {hardware} has the wrong sign"
    assert results[0][0] > 20 and results[-1][0] < -15       # the window is really there
    print(f"window max |hw - A exp| = {worst:.2f} LSB")
    plot_window(results, WINDOW, tmp_path / "stdp_window.png")
    assert (tmp_path / "stdp_window.png").stat().st_size > 1000


def test_learning_never_waits_on_spike_out():
    """Deadlock rule: with spike_out never ready, the sweep and the learning phase still finish
    and axon_in accepts the next step's events (only the spikes stay in the FIFO)."""
    neurons, axons, lanes = 16, 4, 4
    dut = NeuronCore(neurons, axons, lanes, learning=True)
    bench = LearningBench(dut, LearningScenario(neurons, axons, lanes, seed=5, steps=1))
    words = neurons // lanes
    learning_cycles = 3 * words + axons * (words + 1) + words * (axons + 1) + 20

    async def run(ctx):
        ctx.set(dut.learn, 1)
        ctx.set(dut.reward, 1)
        for p in range(PROFILE_COUNT):      # every neuron fires
            await bench.write(ctx, MemorySpace.PROFILE, p * 8 + ProfileField.THRESHOLD.value, 0)
        for a in range(axons):
            await bench.write(ctx, MemorySpace.PLASTIC, a, 1)
        await bench.write(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value, 1)
        await bench.send(ctx, [0, 1])
        await bench.pulse_step(ctx)
        ctx.set(dut.axon_in.payload, 2)
        ctx.set(dut.axon_in.valid, 1)
        held = 0
        for _ in range(neurons + 20 + learning_cycles):
            _, _, ready = await ctx.tick().sample(dut.axon_in.ready)
            if ready:
                break
            held += 1
        else:
            raise SimulationTimeout("axon_in still held off: learning waited on spike_out")
        ctx.set(dut.axon_in.valid, 0)
        assert held > neurons, f"axon_in accepted after {held} cycles, before learning could finish"
        assert ctx.get(dut.busy) and ctx.get(dut.spike_out.valid), "the spikes should still be queued"
        got = []
        ctx.set(dut.spike_out.ready, 1)
        for _ in range(4 * neurons):
            _, _, valid, payload = await ctx.tick().sample(dut.spike_out.valid, dut.spike_out.payload)
            if valid:
                got.append(payload)
        assert got == list(range(neurons))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(run)
    sim.run()
