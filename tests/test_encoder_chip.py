"""The chip's input encoder (hdl/encoder.py in hdl/chip.py) against ChipModel, in the Amaranth
simulator: random rates, phases and targets in both modes with host inputs and routed spikes in
the same steps, real NeuronCores (with learning, so the pre-traces of encoder events are
checked too) behind back-pressure; the encoder's memory map, registers and refusals; a chip
without an encoder."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.chip import MEM_OK, MEM_REFUSED, Chip
from neurofabric.hdl.encoder import InputEncoder
from neurofabric.hdl.protocol import (
    ENCODER_RATE_ONE,
    ChipRegister,
    CoreRegister,
    Counter,
    EncoderField,
    EncoderMode,
    MemorySpace,
    ProfileField,
    ResetMode,
    StdpField,
)
from neurofabric.host.model import (
    ChipModel,
    ChipShape,
    ModelError,
    NeuronProfile,
    Route,
    StdpConfig,
    encoder_draws,
)
from neurofabric.sim.chip_bench import ChipBench, spikes_by_step

PROFILE_ORDER = ["du", "dv", "threshold", "v_reset", "reset_mode", "refractory", "theta_plus", "dtheta"]
EXTREME_RATES = [0, 1, 255, 256, 32768, 65535, ENCODER_RATE_ONE]
EXTREME_PHASES = [0, 1, 32767, 32768, 65535]


def random_encoder(rng, shape, mode):
    """Rates, phases and targets with every extreme present, plus random values."""
    e = shape.encoder_channels
    rates = [rng.choice(EXTREME_RATES) if rng.random() < 0.4 else rng.randrange(ENCODER_RATE_ONE + 1)
             for _ in range(e)]
    phases = [rng.choice(EXTREME_PHASES) if rng.random() < 0.4 else rng.randrange(ENCODER_RATE_ONE)
              for _ in range(e)]
    # several channels may share a target (their events add up)
    targets = [(rng.randrange(shape.cores), rng.randrange(shape.axons)) for _ in range(e)]
    return rates, phases, targets


class Scenario:
    """A random network on real cores, the encoder configured, host inputs per step."""

    def __init__(self, shape, seed, steps, mode, *, learning):
        rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        self.shape, self.steps, self.mode = shape, steps, mode
        self.model = ChipModel(shape)
        self.writes = []
        for c in range(shape.cores):
            self.model.set_weights(c, nrng.integers(-30, 90, size=(shape.axons, shape.neurons)), rng.choice([0, 1]))
            profiles = [NeuronProfile(du=rng.choice([1024, 4096]), dv=rng.choice([0, 512]),
                                      threshold=rng.randint(150, 400), reset_mode=rng.choice(list(ResetMode)),
                                      refractory=rng.choice([0, 1])) for _ in range(2)]
            self.model.set_profiles(c, profiles)
            self.model.set_neurons(c, bias=nrng.integers(-20, 20, size=shape.neurons),
                                   profile=nrng.integers(0, 2, size=shape.neurons))
            if learning:
                self.model.set_stdp(c, StdpConfig(a_plus=rng.randint(10, 60), a_minus=rng.randint(10, 60),
                                                  shift=rng.randint(2, 6), seed=rng.randrange(1 << 16)))
        routes = {}
        for c in range(shape.cores):
            for n in range(shape.neurons):
                entries = [Route(host=True)] if rng.random() < 0.7 else []
                if rng.random() < 0.5:
                    entries.append(Route(core=rng.randrange(shape.cores), axon=rng.randrange(shape.axons)))
                if entries:
                    routes[(c, n)] = entries
        self.model.set_routes(routes)
        self.rates, self.phases, self.targets = random_encoder(rng, shape, mode)
        self.seed = rng.randrange(1 << 16)
        # host inputs in the same steps, some on axons the encoder also targets
        self.inputs = [[rng.choice(self.targets) if rng.random() < 0.5 else
                        (rng.randrange(shape.cores), rng.randrange(shape.axons)) for _ in range(rng.randint(0, 3))]
                       for _ in range(steps)]
        self.learning = learning
        self._chip_writes()

    def _chip_writes(self):
        """Every memory of the model, as (space, core, addr, word) writes for the chip."""
        s, w = self.shape, self.writes
        for c, core in enumerate(self.model.cores):
            for space in (MemorySpace.WEIGHT, MemorySpace.NEURON):
                size = s.axons * s.neurons if space is MemorySpace.WEIGHT else s.neurons
                for addr, word in enumerate(self.model.read_words(space, c, 0, size)):
                    w.append((space, c, addr, int(word) & 0xFFFFFFFF))
            for p, profile in enumerate(core.profiles):
                for f in ProfileField:
                    value = getattr(profile, PROFILE_ORDER[f.value])
                    w.append((MemorySpace.PROFILE, c, p * 8 + f.value,
                              int(value.value if isinstance(value, ResetMode) else value) & 0xFFFFFFFF))
            w.append((MemorySpace.CORE, c, CoreRegister.WEIGHT_EXP.value, core.weight_exp))
            if self.learning:
                for f in StdpField:
                    if f is not StdpField.REWARD:
                        w.append((MemorySpace.STDP, c, f.value, int(self.model.read_words(
                            MemorySpace.STDP, c, f.value, 1)[0]) & 0xFFFFFFFF))
                for a in range(s.axons):
                    w.append((MemorySpace.PLASTIC, c, a, 1))
                w.append((MemorySpace.CORE, c, CoreRegister.LEARNING.value, 1))
        for space in (MemorySpace.ROUTE_POINTER, MemorySpace.ROUTE_ENTRY):
            size = s.cores * s.neurons if space is MemorySpace.ROUTE_POINTER else s.route_entries
            for addr, word in enumerate(self.model.read_words(space, 0, 0, size)):
                w.append((space, 0, addr, int(word) & 0xFFFFFFFF))
        # the encoder, in the model and the chip through the same words
        e = s.encoder_channels
        words = ([(EncoderField.RATE.value * e + i, r) for i, r in enumerate(self.rates)]
                 + [(EncoderField.PHASE.value * e + i, p) for i, p in enumerate(self.phases)]
                 + [(EncoderField.TARGET.value * e + i, a | c << 16) for i, (c, a) in enumerate(self.targets)])
        registers = [(ChipRegister.ENCODER_SEED.value, self.seed),
                     (ChipRegister.ENCODER.value, 1 | self.mode.value << 1)]
        for addr, word in words:
            self.model.write_words(MemorySpace.ENCODER, 0, addr, [word])
            w.append((MemorySpace.ENCODER, 0, addr, word))
        for addr, word in registers:
            self.model.write_words(MemorySpace.CHIP, 0, addr, [word])
            w.append((MemorySpace.CHIP, 0, addr, word))

    def expected(self):
        for t, events in enumerate(self.inputs):
            if events:
                self.model.inject(t, events)
        per_step = [[] for _ in range(self.steps)]
        for t, core, neuron in self.model.run(self.steps):
            per_step[t].append((core, neuron))
        return [sorted(p) for p in per_step]


def simulate(dut, writes, body, ready_probability=1.0, seed=0):
    bench = ChipBench(dut, ready_probability, seed)
    result = {}

    async def main(ctx):
        for space, core, addr, data in writes:
            resp = await bench.mem(ctx, space, core, addr, data, write=True)
            assert resp == MEM_OK, f"write {space.name} core {core} [{addr}] = {data:#x}: {resp}"
        await body(ctx, bench, result)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(main)
    sim.add_testbench(bench.collect, background=True)
    sim.run()
    return bench, result


@pytest.mark.parametrize("mode", list(EncoderMode))
def test_encoder_chip_against_model(mode):
    """Real learning cores (lanes < neurons: back-pressure on encoder events), host inputs and
    routed spikes in the same steps; spikes, counters, phases, weights and pre-traces must match."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    shape = ChipShape(cores=2, neurons=8, axons=8, lanes=2, route_entries=32,
                      encoder_channels=random.Random(seed).randint(5, 12))
    scenario = Scenario(shape, seed, steps=12, mode=mode, learning=True)
    dut = Chip(shape, learning=True, input_queue_depth=8)
    e = shape.encoder_channels

    async def body(ctx, bench, result):
        await bench.run_network(ctx, scenario)
        result["counters"] = {c: await bench.mem(ctx, MemorySpace.COUNTER, 0, c.value) for c in Counter}
        result["encoder"] = [await bench.mem(ctx, MemorySpace.ENCODER, 0, a) for a in range(3 * e)]
        result["registers"] = [await bench.mem(ctx, MemorySpace.CHIP, 0, r.value)
                               for r in (ChipRegister.ENCODER, ChipRegister.ENCODER_SEED)]
        result["weights"] = [[await bench.mem(ctx, MemorySpace.WEIGHT, c, a) for a in range(shape.axons * shape.neurons)]
                             for c in range(shape.cores)]
        result["traces"] = [[await bench.mem(ctx, MemorySpace.TRACE, c, a) for a in range(shape.axons)]
                            for c in range(shape.cores)]

    bench, result = simulate(dut, scenario.writes, body, ready_probability=0.6, seed=seed)
    expected = scenario.expected()
    got = spikes_by_step(bench.out, scenario.steps)
    for t in range(scenario.steps):
        assert got[t] == expected[t], f"step {t}: chip {got[t]} != model {expected[t]}"
    model = scenario.model
    for c in Counter:
        if c is not Counter.OUTPUT_STALLS:
            assert result["counters"][c] == model.counters[c], c.name
    assert result["counters"][Counter.INPUT_EVENTS] == sum(map(len, scenario.inputs))   # host inputs only
    assert result["encoder"] == [int(w) & 0xFFFFFFFF for w in model.read_words(MemorySpace.ENCODER, 0, 0, 3 * e)]
    assert result["registers"] == [1 | mode.value << 1, scenario.seed]
    for c in range(shape.cores):
        assert result["weights"][c] == [int(w) & 0xFFFFFFFF for w in model.weights(c).ravel()], f"core {c} weights"
        assert result["traces"][c] == model.state(c)["pre_trace"].tolist(), f"core {c} pre-traces"
    # the encoder must have mattered: without it the model's spikes or currents differ
    quiet = Scenario(shape, seed, steps=12, mode=mode, learning=True)
    quiet.model.set_encoder(enabled=False)
    assert quiet.expected() != expected or any(
        not np.array_equal(quiet.model.state(c)["u"], model.state(c)["u"]) for c in range(shape.cores))
    if mode is EncoderMode.PHASE:     # phases after 12 steps, computed independently
        assert model.encoder_phase.tolist() == [(p + 12 * r) % ENCODER_RATE_ONE
                                                for p, r in zip(scenario.phases, scenario.rates)]


def test_encoder_extremes_and_disable():
    """Every channel at an extreme rate (0: never, 65536: every step) and phase edge, PHASE mode,
    then the encoder disabled for some steps (phases hold), then BERNOULLI with rates 0 / 65535;
    the stand-in for the spike check is the model, one step at a time."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    shape = ChipShape(cores=1, neurons=8, axons=8, lanes=8, route_entries=8, encoder_channels=8)
    model = ChipModel(shape)
    model.set_weights(0, np.eye(8, dtype=np.int64))           # axon a drives neuron a only
    model.set_profiles(0, [NeuronProfile(du=4096, dv=4096, threshold=1)])
    model.set_routes({(0, n): [Route(host=True)] for n in range(8)})
    rates = [0, ENCODER_RATE_ONE, 65535, 1, 32768, 32768, ENCODER_RATE_ONE, 0]
    phases = [65535, 0, 1, 65535, 32768, 32767, 65535, 0]
    targets = [(0, a) for a in range(8)]
    model.set_encoder(rates, phases, targets, mode=EncoderMode.PHASE, enabled=True, seed=seed & 0xFFFF)
    words = ([(MemorySpace.WEIGHT, 0, i, int(w)) for i, w in enumerate(model.weights(0).ravel())]
             + [(MemorySpace.PROFILE, 0, f.value, v) for f, v in ((ProfileField.DU, 4096), (ProfileField.DV, 4096),
                                                                  (ProfileField.THRESHOLD, 1))]
             + [(s, 0, a, int(w) & 0xFFFFFFFF) for s, size in ((MemorySpace.ROUTE_POINTER, 8), (MemorySpace.ROUTE_ENTRY, 8))
                for a, w in enumerate(model.read_words(s, 0, 0, size))]
             + [(MemorySpace.ENCODER, 0, a, int(w)) for a, w in enumerate(model.read_words(MemorySpace.ENCODER, 0, 0, 24))]
             + [(MemorySpace.CHIP, 0, ChipRegister.ENCODER_SEED.value, seed & 0xFFFF),
                (MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 1)])
    plan = [("run", 5), ("write", ChipRegister.ENCODER, 0), ("run", 3), ("write", ChipRegister.ENCODER, 1),
            ("run", 2), ("rates", [0, 65535, 0, 65535, 0, 65535, 65535, 0]), ("write", ChipRegister.ENCODER, 3),
            ("run", 6), ("edge", None), ("run", 1),
            # a budget of 3 steps: the encoder turns itself off in the middle of a 5-step run
            ("rates", [ENCODER_RATE_ONE] * 8), ("write", ChipRegister.ENCODER_STEPS, 3),
            ("write", ChipRegister.ENCODER, 1), ("run", 5)]
    expected = []
    for i, item in enumerate(plan):
        if item[0] == "run":
            for _ in range(item[1]):
                expected.append(sorted((c, n) for _, c, n in model.step()))
        elif item[0] == "write":
            model.write_words(MemorySpace.CHIP, 0, item[1].value, [item[2]])
        else:
            if item[0] == "edge":
                # each rate one above (even channels: spikes) or equal to (odd: does not) the draw
                # its channel gets next
                draws, _ = encoder_draws(model.encoder_lfsr, 8)
                plan[i] = item = ("rates", [int(d) + 1 - (c % 2) for c, d in enumerate(draws)])
            model.write_words(MemorySpace.ENCODER, 0, 0, item[1])

    dut = Chip(shape, input_queue_depth=4)

    async def body(ctx, bench, result):
        done = 0
        for item in plan:
            if item[0] == "run":
                await bench.put(ctx, dut.run, item[1])
                done += item[1]
                for _ in range(5000 * item[1]):
                    if bench.markers >= done:
                        break
                    await ctx.tick()
            elif item[0] == "write":
                assert await bench.mem(ctx, MemorySpace.CHIP, 0, item[1].value, item[2], write=True) == MEM_OK
            else:
                for i, r in enumerate(item[1]):
                    assert await bench.mem(ctx, MemorySpace.ENCODER, 0, i, r, write=True) == MEM_OK
        result["phases"] = [await bench.mem(ctx, MemorySpace.ENCODER, 0, 8 + i) for i in range(8)]

    bench, result = simulate(dut, words, body)
    got = spikes_by_step(bench.out, len(expected))
    assert got == expected
    assert result["phases"] == model.encoder_phase.tolist()
    # the plan exercised what it claims: spikes every step from rate 65536, none from rate 0
    assert all((0, 1) in step for step in expected[:5]) and not any((0, 0) in step for step in expected[:5])
    assert not any(expected[5:8])                           # disabled: no input at all
    assert expected[-6] == [(0, n) for n in range(0, 8, 2)]    # a draw equal to the rate spikes
    assert expected[-5:] == [[(0, n) for n in range(8)]] * 3 + [[], []]      # the 3-step budget
    assert model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 3).tolist() == [0, seed & 0xFFFF, 0]


def test_encoder_memory_map_and_refusals():
    """Out-of-range words and addresses are refused by the chip exactly where the model raises,
    and change nothing; reads sign-extend nothing (all fields unsigned)."""
    shape = ChipShape(cores=2, neurons=8, axons=16, lanes=8, route_entries=8, encoder_channels=3)
    model = ChipModel(shape)
    e = shape.encoder_channels
    rate, phase, target = (f.value * e for f in EncoderField)
    cases = [
        (MemorySpace.ENCODER, rate + 1, ENCODER_RATE_ONE), (MemorySpace.ENCODER, rate + 2, ENCODER_RATE_ONE + 1),
        (MemorySpace.ENCODER, phase, 65535), (MemorySpace.ENCODER, phase + 1, 65536),
        (MemorySpace.ENCODER, phase + 2, 0xFFFFFFFF),
        (MemorySpace.ENCODER, target, 15 | 1 << 16), (MemorySpace.ENCODER, target + 1, 16),
        (MemorySpace.ENCODER, target + 2, 2 << 16), (MemorySpace.ENCODER, target + 1, 1 << 24),
        (MemorySpace.ENCODER, 3 * e, 0),
        (MemorySpace.CHIP, ChipRegister.ENCODER.value, 3), (MemorySpace.CHIP, ChipRegister.ENCODER.value, 4),
        (MemorySpace.CHIP, ChipRegister.ENCODER_SEED.value, 65535),
        (MemorySpace.CHIP, ChipRegister.ENCODER_SEED.value, 65536),
        (MemorySpace.CHIP, ChipRegister.ENCODER.value, 2),
        (MemorySpace.CHIP, ChipRegister.ENCODER_STEPS.value, 65536),
        (MemorySpace.CHIP, ChipRegister.ENCODER_STEPS.value, 65535),
    ]
    expected = []
    for space, addr, word in cases:
        try:
            model.write_words(space, 0, addr, [word])
            expected.append(MEM_OK)
        except ModelError:
            expected.append(MEM_REFUSED)
    assert expected.count(MEM_REFUSED) == 10            # the cases above hold 10 bad words/addresses
    dut = Chip(shape)

    async def body(ctx, bench, result):
        result["resp"] = [await bench.mem(ctx, s, 0, a, w, write=True) for s, a, w in cases]
        result["words"] = [await bench.mem(ctx, MemorySpace.ENCODER, 1, a) for a in range(3 * e + 1)]
        result["registers"] = [await bench.mem(ctx, MemorySpace.CHIP, 0, r.value)
                               for r in (ChipRegister.ENCODER, ChipRegister.ENCODER_SEED, ChipRegister.ENCODER_STEPS)]

    _, result = simulate(dut, [], body)
    assert result["resp"] == expected
    assert result["words"] == model.read_words(MemorySpace.ENCODER, 0, 0, 3 * e).tolist() + [0]
    assert result["registers"] == model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 3).tolist()
    assert result["registers"] == [2, 65535, 65535]


def test_chip_without_encoder_refuses_encoder_requests():
    shape = ChipShape(cores=1, neurons=8, axons=8, lanes=8, route_entries=8)
    dut = Chip(shape)
    assert dut.encoder is None and dut.encoder_channels == 0
    model = ChipModel(shape)
    with pytest.raises(ModelError, match="no input encoder"):
        model.write_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, [1])
    with pytest.raises(ModelError, match="out of range"):
        model.write_words(MemorySpace.ENCODER, 0, 0, [1])

    async def body(ctx, bench, result):
        result["resp"] = [await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 1, write=True),
                          await bench.mem(ctx, MemorySpace.ENCODER, 0, 0, 1, write=True),
                          await bench.mem(ctx, MemorySpace.CHIP, 0, ChipRegister.ENCODER.value),
                          await bench.mem(ctx, MemorySpace.ENCODER, 0, 0)]

    _, result = simulate(dut, [], body)
    assert result["resp"] == [MEM_REFUSED, MEM_REFUSED, 0, 0]


def test_input_encoder_rejects_zero_channels():
    with pytest.raises(ValueError, match="encoder_channels"):
        InputEncoder(ChipShape(cores=1, neurons=8, axons=8, lanes=8))


def test_lfsr_ahead_is_sixteen_single_steps():
    """The gateware's 16-step LFSR jump (word-wide XORs) equals 16 single steps written out,
    for random and extreme states."""
    from amaranth.hdl import Module, Signal

    from neurofabric.hdl.encoder import lfsr_ahead
    from neurofabric.hdl.protocol import ENCODER_LFSR_TAPS

    def single_steps(x):
        for _ in range(16):
            x = (x >> 1) ^ (ENCODER_LFSR_TAPS if x & 1 else 0)
        return x

    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    states = [1, 0xFFFFFFFF, 0x80000000, 0xFFFF, 0x10000] + [rng.getrandbits(32) for _ in range(500)]
    m = Module()
    state, ahead = Signal(32), Signal(32)
    m.d.comb += ahead.eq(lfsr_ahead(state))
    got = []

    async def bench(ctx):
        for x in states:
            ctx.set(state, x)
            got.append(ctx.get(ahead))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == [single_steps(x) for x in states]
