# amaranth: UnusedElaboratable=no
# (test_learning_needs_learning_cores builds cores that a chip then refuses)
"""On-chip learning through the whole chip, against ChipModel.

A multi-core network with every core learning (random STDP configuration, plastic masks,
recurrent, self-loop and multicast routes), random inputs, and reward and learning-switch
changes between chunks of steps (written through ``ChipRegister.REWARD`` and through STDP
``REWARD`` of any core): every step's host spikes, and after the run every core's weights,
traces and neuron state, must equal ChipModel's. Small in the Amaranth simulator, >= 50 steps
under Verilator (bench ``chip_learning_against_model`` in tests/tb_chip.py). End to end, the
host ``Chip`` API runs a learning network on the Verilator sim device and on the model.
"""

import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.chip import MEM_OK, MEM_REFUSED, Chip
from neurofabric.hdl.protocol import ChipRegister, MemorySpace, StdpField
from neurofabric.host.model import ChipModel, ChipShape
from neurofabric.sim.chip_bench import ChipBench, spikes_by_step

TESTS = Path(__file__).parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_nf_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tb_chip = _load("tb_chip")
WORD = 0xFFFFFFFF


def test_learning_chip_against_model_pysim(seed=None):
    """3 learning cores (lanes = 2) in the Amaranth simulator, 14 steps, out ready 1/2."""
    seed = random.randrange(1 << 30) if seed is None else seed
    print(f"seed = {seed}")
    rng = random.Random(seed)
    shape = ChipShape(cores=3, neurons=4, axons=4, lanes=2, route_entries=48)
    cores, steps = shape.cores, 14
    queue = 32          # a chunk (<= 8 steps of <= 4 inputs) is injected before it runs
    dut = Chip(shape, learning=True, input_queue_depth=queue)
    model = ChipModel(shape)
    setup = tb_chip.network_words(shape, rng) + tb_chip.learning_words(shape, rng)
    for space, core, addr, word in setup:
        model.write_words(space, core, addr, [word])
    initial_weights = [model.cores[c].weights.copy() for c in range(cores)]
    inputs = [[(rng.randrange(cores), rng.randrange(shape.axons)) for _ in range(rng.randint(0, 4))]
              for _ in range(steps)]
    schedule = []
    for t, chunk, writes in tb_chip.learning_schedule(steps, rng):
        writes = [(space, rng.randrange(cores) if core == "any" else core, addr, word)
                  for space, core, addr, word in writes]
        schedule.append((t, chunk, writes))
        assert sum(map(len, inputs[t:t + chunk])) <= queue
    expected = [[] for _ in range(steps)]
    for t, chunk, writes in schedule:
        for space, core, addr, word in writes:
            model.write_words(space, core, addr, [word])
        for s in range(t, t + chunk):
            if inputs[s]:
                model.inject(s, inputs[s])
        for s, core, neuron in model.run(chunk):
            expected[s].append((core, neuron))
    bench = ChipBench(dut, 0.5, seed)
    got_state = {}

    async def main(ctx):
        for space, core, addr, word in setup:
            assert await bench.mem(ctx, space, core, addr, word & WORD, write=True) == MEM_OK
        for t, chunk, writes in schedule:
            for space, core, addr, word in writes:
                assert await bench.mem(ctx, space, core, addr, word & WORD, write=True) == MEM_OK
                assert await bench.mem(ctx, space, core, addr) == word & WORD
            for s in range(t, t + chunk):
                for core, axon in inputs[s]:
                    await bench.put(ctx, dut.inject, {"core": core, "axon": axon, "step": s})
            await bench.put(ctx, dut.run, chunk)
            await bench.wait_markers(ctx, t + chunk, budget=4000 * chunk)
        for c in range(cores):
            for space, words in tb_chip.learning_state(model, shape, c).items():
                got_state[c, space] = [await bench.mem(ctx, space, c, a) for a in range(len(words))]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(main)
    sim.add_testbench(bench.collect, background=True)
    sim.run()

    got = spikes_by_step(bench.out, steps)
    for t in range(steps):
        assert got[t] == sorted(expected[t]), f"step {t}: chip {got[t]} != model {sorted(expected[t])}"
    assert sum(map(len, expected)) > 0, "the network never spiked"
    for c in range(cores):
        for space, words in tb_chip.learning_state(model, shape, c).items():
            assert got_state[c, space] == [int(w) & WORD for w in words], f"core {c} {space.name}"
    assert any(np.any(model.cores[c].weights != initial_weights[c]) for c in range(cores)), "nothing learned"


def test_reward_and_learning_registers():
    """STDP REWARD of every core is the chip's REWARD register; bad words and cores are refused."""
    shape = ChipShape(cores=2, neurons=2, axons=2, lanes=1, route_entries=8)
    dut = Chip(shape, learning=True)
    bench = ChipBench(dut)
    answers = []
    requests = [
        (MemorySpace.STDP, 1, StdpField.REWARD.value, -5 & WORD, True),     # write via core 1
        (MemorySpace.CHIP, 0, ChipRegister.REWARD.value, 0, False),
        (MemorySpace.STDP, 0, StdpField.REWARD.value, 0, False),
        (MemorySpace.STDP, 0, StdpField.REWARD.value, 128, True),          # out of range
        (MemorySpace.STDP, 0, StdpField.REWARD.value, -129 & WORD, True),  # out of range
        (MemorySpace.STDP, 2, StdpField.REWARD.value, 3, True),            # no core 2
        (MemorySpace.STDP, 2, StdpField.REWARD.value, 0, False),
        (MemorySpace.CHIP, 0, ChipRegister.REWARD.value, 127, True),
        (MemorySpace.STDP, 1, StdpField.REWARD.value, 0, False),
        (MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, 0, True),
        (MemorySpace.CHIP, 0, ChipRegister.LEARNING.value, 0, False),
    ]

    async def main(ctx):
        for space, core, addr, data, write in requests:
            answers.append(await bench.mem(ctx, space, core, addr, data, write=write))
        answers.append((ctx.get(dut.cores[0].reward), ctx.get(dut.cores[1].learn)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(main)
    sim.run()
    assert answers == [MEM_OK, -5 & WORD, -5 & WORD, MEM_REFUSED, MEM_REFUSED, MEM_REFUSED, 0,
                       MEM_OK, 127, MEM_OK, 0, (127, 0)]


def test_learning_needs_learning_cores():
    from neurofabric.sim.router_testcore import IntegrateFireCore
    shape = ChipShape(cores=1, neurons=2, axons=2, lanes=1, route_entries=4)
    with pytest.raises(ValueError, match="learn and reward"):
        Chip(shape, learning=True, core_factory=lambda i: IntegrateFireCore(
            2, 2, 1, weights=[[0, 0], [0, 0]], bias=[0, 0], threshold=1))
    with pytest.raises(ValueError, match="learning must be True or False"):
        Chip(shape, learning=1)


@pytest.mark.verilator
def test_learning_chip_against_model_verilator(tmp_path):
    from neurofabric.sim import cocotb as sim_cocotb
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    shape = ChipShape(cores=3, neurons=16, axons=16, lanes=4, route_entries=256)
    steps = 60
    report = tmp_path / "report.json"
    env = {"NF_SHAPE": f"{shape.cores},{shape.neurons},{shape.axons},{shape.lanes},{shape.route_entries}",
           "NF_SEED": str(seed), "NF_STEPS": str(steps), "NF_READY": "0.5", "NF_REPORT": str(report)}
    start = time.monotonic()
    sim_cocotb.run_cocotb(Chip(shape, learning=True, input_queue_depth=32), test_module="tb_chip",
                          testcase="chip_learning_against_model", test_dir=TESTS, seed=seed, extra_env=env)
    figures = json.loads(report.read_text())
    print(f"{figures} in {time.monotonic() - start:.1f} s")
    assert figures["steps"] == steps and figures["weights_changed"] > 0


E2E_SHAPE = ChipShape(cores=2, neurons=16, axons=16, lanes=8, route_entries=64)   # as tests/test_device.py


@pytest.mark.verilator
def test_learning_network_sim_device_matches_model():
    """The host Chip API: a learning network (plastic feed-forward and recurrent connections,
    reward changes, learning off and on) on Chip.open("sim") and Chip.open("model")."""
    from neurofabric.host import IF, LIF, STDP, Network
    from neurofabric.host import Chip as HostChip
    from neurofabric.host.model_backend import ModelBackend

    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(6)
    a = net.population(10, LIF(threshold=150))
    b = net.population(8, IF(threshold=120))
    ff = net.connect(inp, a, weights=rng.integers(10, 80, (6, 10)),
                     plastic=STDP(a_plus=90, a_minus=40, shift=5))
    ab = net.connect(a, b, weights=rng.integers(-10, 70, (10, 8)), plastic=STDP(a_plus=60, a_minus=60, shift=4))
    net.connect(b, a, weights=rng.integers(-30, 40, (8, 10)))
    rasters = [rng.random((12, 6)) < 0.4 for _ in range(4)]
    rewards = [1, -3, 2, 0]
    results = {}
    with HostChip.open("sim", shape=E2E_SHAPE) as sim_chip, HostChip(ModelBackend(E2E_SHAPE)) as model_chip:
        info = sim_chip.backend.identify()
        assert info.learning and info.build == "sim"
        assert model_chip.backend.identify().learning
        for name, chip in (("sim", sim_chip), ("model", model_chip)):
            chip.load(net, record=[a, b])
            initial = chip.read_weights(ff, raw=True), chip.read_weights(ab, raw=True)
            spikes = []
            for i, (raster, reward) in enumerate(zip(rasters, rewards)):
                chip.set_reward(reward)
                chip.set_learning(i != 2)
                spikes.append(chip.run({inp: raster}, steps=len(raster)).raw.copy())
            results[name] = (spikes, chip.read_weights(ff, raw=True), chip.read_weights(ab, raw=True))
            assert np.any(results[name][1] != initial[0]) and np.any(results[name][2] != initial[1]), \
                f"{name}: the network did not learn"
    (sim_spikes, sim_ff, sim_ab), (model_spikes, model_ff, model_ab) = results["sim"], results["model"]
    for got, want in zip(sim_spikes, model_spikes):
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert sum(len(s) for s in model_spikes) > 0
    np.testing.assert_array_equal(sim_ff, model_ff)
    np.testing.assert_array_equal(sim_ab, model_ab)
