"""The input encoder on the Verilator sim device (the learning chip, through the host link and
the host Chip API) against the bit-exact model: IDENTIFY reports the channels; phase and
Bernoulli encodings with fan-out to two cores, host events in the same steps, the step budget
and reset_state give the same spikes and the same encoder words."""

import random

import numpy as np
import pytest

from neurofabric.hdl.protocol import ChipRegister, MemorySpace
from neurofabric.host import IF, LIF, Chip, Network
from neurofabric.host.encoding import rate_encode
from neurofabric.host.model import ChipShape
from neurofabric.host.model_backend import ModelBackend

pytestmark = pytest.mark.verilator

SHAPE = ChipShape(cores=2, neurons=16, axons=32, lanes=8, route_entries=64, encoder_channels=24)


def network(seed):
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(10, name="pixels")
    hid = net.population(20, LIF(threshold=250, tau_mem=5), name="hidden")    # split over both cores
    out = net.population(4, IF(threshold=300), name="out")
    net.connect(inp, hid, weights=rng.normal(110, 70, (10, 20)))
    net.connect(hid, out, weights=rng.normal(50, 60, (20, 4)))
    return net, inp


def test_encoder_on_the_sim_device_matches_the_model():
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = np.random.default_rng(seed)
    net, inp = network(seed)
    samples = [rng.random(10) for _ in range(3)]
    samples[0][:3] = [0, 1, 0.5]
    extra = rng.random((12, 10)) < 0.15
    lfsr_seed = int(rng.integers(1 << 16))
    results = {}
    with Chip.open("sim", shape=SHAPE) as sim_chip, Chip(ModelBackend(SHAPE)) as model_chip:
        assert sim_chip.info.encoder_channels == 24 and sim_chip.info.learning
        for name, chip in (("sim", sim_chip), ("model", model_chip)):
            chip.load(net)
            assert len(chip.compiled.input_axons[inp]) == 2           # 20 channels used
            runs = []
            for x in samples:
                chip.encode({inp: x}, mode="phase", steps=8)
                runs.append(chip.run(steps=11).raw)
                chip.reset_state()
            runs.append(chip.run(steps=11).raw)                 # rewound: the last sample again
            chip.encode({inp: samples[1]}, mode="bernoulli", seed=lfsr_seed)
            runs.append(chip.run({inp: extra}, steps=12).raw)
            words = chip.backend.read(MemorySpace.ENCODER, 0, 0, 3 * SHAPE.encoder_channels)
            register = chip.backend.read(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 2)
            chip.stop_encoding()
            runs.append(chip.run(steps=3).raw)
            results[name] = runs, words, register
    (sim_runs, sim_words, sim_register), (model_runs, model_words, model_register) = results["sim"], results["model"]
    for k, (got, want) in enumerate(zip(sim_runs, model_runs)):
        # the order of spikes inside a step is the router's arbitration: compare as sets
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist())), f"run {k}"
    assert sum(len(r) for r in model_runs[:3]) > 0 and len(model_runs[4]) > 0
    np.testing.assert_array_equal(sim_words, model_words)
    np.testing.assert_array_equal(sim_register, model_register)
    assert np.array_equal(sim_runs[3][:, 1:], sim_runs[2][:, 1:])
    # and the phase code is rate_encode's: the same spikes as streaming its raster on the model
    with Chip(ModelBackend(SHAPE)) as streamed:
        streamed.load(net)
        for i, x in enumerate(samples):
            want = streamed.run({inp: rate_encode(x, 8)}, steps=11).raw
            assert sorted(map(tuple, want.tolist())) == sorted(map(tuple, sim_runs[i].tolist()))
            streamed.reset_state()
