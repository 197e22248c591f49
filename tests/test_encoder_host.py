"""The host side of the input encoder: Chip.encode on the model backend (the sim device in
tests/test_encoder_device.py): equality with rate_encode, fan-out to several cores, the step
budget, reset_state, validation that sends nothing, the demo's classify with the encoder."""

import random

import numpy as np
import pytest

from neurofabric.hdl.protocol import ChipRegister, EncoderMode, MemorySpace
from neurofabric.host import IF, LIF, STDP, Chip, Network
from neurofabric.host.compiler import encoder_layout
from neurofabric.host.encoding import bernoulli_encoder_words, phase_encoder_words, rate_encode
from neurofabric.host.model import ChipModel, ChipShape, NeuronProfile, Route
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.network import CapacityError, RangeError, ShapeError, ValidationError

SHAPE = ChipShape(cores=2, neurons=16, axons=64, lanes=8, route_entries=128, encoder_channels=40)


class CountingBackend(ModelBackend):
    """A model backend that counts the commands it is sent."""

    def __init__(self, shape):
        super().__init__(shape)
        self.writes, self.runs = [], 0

    def write(self, space, core, addr, words):
        self.writes.append((space, addr, len(np.atleast_1d(words))))
        super().write(space, core, addr, words)

    def run(self, steps):
        self.runs += 1
        return super().run(steps)


def test_phase_words_reproduce_rate_encode():
    """The chip's phase mode with phase_encoder_words(x) spikes exactly as rate_encode(x, T):
    random intensities, every quantisation edge, several T, levels and phases."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = np.random.default_rng(seed)
    for levels, phase, steps in [(256, 0.5, 16), (256, 0.5, 37), (16, 0.0, 20), (65536, 0.25, 9), (1, 0.5, 5)]:
        x = np.concatenate([rng.random(24), [0, 1, 0.5, 1 / levels, 0.5 / levels, 1 - 0.5 / levels, 0.999]])
        e = len(x)
        shape = ChipShape(cores=1, neurons=e, axons=e, lanes=1, route_entries=e, encoder_channels=e)
        model = ChipModel(shape)
        model.set_weights(0, np.eye(e, dtype=np.int64))
        model.set_profiles(0, [NeuronProfile(du=4096, dv=4096, threshold=1)])
        model.set_routes({(0, n): [Route(host=True)] for n in range(e)})
        rates, phases = phase_encoder_words(x, levels, phase)
        model.set_encoder(rates, phases, [(0, c) for c in range(e)], mode=EncoderMode.PHASE, enabled=True)
        got = np.zeros((steps, e), dtype=bool)
        for t, _, n in model.run(steps):
            got[t, n] = True
        assert np.array_equal(got, rate_encode(x, steps, levels, phase)), (levels, phase, steps)
    assert phase_encoder_words([0.5])[0].tolist() == [round(0.5 * 256) * 256]
    assert phase_encoder_words([0.3])[1].tolist() == [int(0.5 * 256) * 256]
    assert bernoulli_encoder_words([0, 0.5, 1]).tolist() == [0, 32768, 65536]
    with pytest.raises(RangeError, match="levels = 100 must be a power of two"):
        phase_encoder_words([0.5], levels=100)


def two_core_net(seed, plastic=False):
    """An input of 12 feeding a 24-neuron layer: on 16-neuron cores the layer is split, so every
    input neuron feeds two cores (two encoder channels each)."""
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(12, name="pixels")
    hid = net.population(24, LIF(threshold=300, tau_mem=6), name="hidden")
    out = net.population(5, IF(threshold=400), name="out")
    net.connect(inp, hid, weights=rng.normal(120, 80, (12, 24)),
                plastic=STDP(a_plus=40, a_minus=30, shift=4) if plastic else None)
    net.connect(hid, out, weights=rng.normal(60, 60, (24, 5)))
    return net, inp, hid, out


def test_encode_equals_streamed_rate_code_with_fan_out():
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = np.random.default_rng(seed)
    net, inp, hid, out = two_core_net(seed)
    with Chip(ModelBackend(SHAPE)) as enc, Chip(ModelBackend(SHAPE)) as streamed:
        enc.load(net)
        streamed.load(net)
        assert len(enc.compiled.input_axons[inp]) == 2
        for _ in range(3):
            x = rng.random(12)
            x[:2] = [0, 1]
            assert enc.encode({"pixels": x}, steps=10) == 24
            a = enc.run(steps=14)
            b = streamed.run({inp: rate_encode(x, 10)}, steps=14)
            assert np.array_equal(a.raw[:, 1:], b.raw[:, 1:]) and len(a.spikes(hid)) > 0
            # the encoder stopped after its 10 steps: more steps give what an empty input gives
            assert np.array_equal(enc.run(steps=3).raw[:, 1:], streamed.run(steps=3).raw[:, 1:])
            assert enc.backend.read(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 1)[0] == 0
            # reset_state rewinds the encoder to the encode() call: the same run again
            enc.reset_state()
            streamed.reset_state()
            again = enc.run(steps=14)
            assert np.array_equal(again.raw[:, 1:], a.raw[:, 1:])
            enc.reset_state()
            streamed.reset_state()


def test_encode_without_step_limit_host_events_and_stop():
    """No `steps`: the encoder runs in every step, across runs; host events add to it."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    net, inp, hid, out = two_core_net(seed)
    x = np.random.default_rng(seed).random(12) * 0.6
    extra = np.random.default_rng(seed + 1).random((20, 12)) < 0.2
    with Chip(ModelBackend(SHAPE)) as enc, Chip(ModelBackend(SHAPE)) as streamed:
        for chip in (enc, streamed):
            chip.load(net)
        enc.encode({inp: x})
        a = [enc.run({inp: extra[:8]}, steps=8), enc.run({inp: extra[8:]}, steps=12)]
        raster = rate_encode(x, 20).astype(np.int64) + extra
        b = streamed.run({inp: raster}, steps=20)
        assert np.array_equal(np.concatenate([r.raw for r in a])[:, 1:], b.raw[:, 1:])
        enc.stop_encoding()
        assert np.array_equal(enc.run(steps=4).raw[:, 1:], streamed.run(steps=4).raw[:, 1:])


def test_bernoulli_mode_statistics_and_rewind():
    net = Network()
    inp = net.input(8)
    pop = net.population(8, IF(threshold=1, reset="value"))
    net.connect(inp, pop, weights=np.eye(8) * 10)
    x = np.linspace(0, 1, 8)
    with Chip(ModelBackend(SHAPE)) as chip:
        chip.load(net)
        chip.encode({inp: x}, mode="bernoulli", seed=321)
        first = chip.run(steps=600)
        freq = first.counts(pop) / 600
        # IF neurons with threshold 1 and weight 10 fire once per input spike, one step later
        # (v keeps the remainder: count >= inputs - 1); binomial 5 sigma
        sigma = np.sqrt(x * (1 - x) / 600)
        assert np.all(np.abs(freq - x) <= 5 * sigma + 0.01), freq
        chip.reset_state()
        assert np.array_equal(chip.run(steps=600).raw[:, 1:], first.raw[:, 1:])
        chip.encode({inp: x}, mode="bernoulli", seed=322)
        chip.reset_state()
        assert not np.array_equal(chip.run(steps=600).raw[:, 1:], first.raw[:, 1:])


def test_encode_writes_only_what_changed():
    """Per sample (encode, run, reset_state) the host sends the rates, the register changes
    and the phases the run moved; targets and unchanged words only once."""
    net, inp, hid, out = two_core_net(3)
    backend = CountingBackend(SHAPE)
    with Chip(backend) as chip:
        chip.load(net)
        backend.writes.clear()
        chip.encode({inp: np.full(12, 0.3)}, steps=4)
        first = [w[0] for w in backend.writes]
        assert first.count(MemorySpace.ENCODER) == 3          # targets, rates (+ zeros), phases
        chip.run(steps=6)
        chip.reset_state()
        backend.writes.clear()
        chip.encode({inp: np.full(12, 0.7)}, steps=4)
        assert backend.writes == [(MemorySpace.ENCODER, 0, 24)]        # the rates only


def test_encode_validation_sends_nothing():
    net, inp, hid, out = two_core_net(0)
    backend = CountingBackend(SHAPE)
    with Chip(backend) as chip:
        with pytest.raises(ValidationError, match="no network is loaded"):
            chip.encode({inp: np.zeros(12)})
        chip.load(net)
        backend.writes.clear()
        good = np.full(12, 0.5)
        cases = [
            (dict(inputs={inp: np.zeros(11)}), ShapeError, r"inputs\['pixels'\] has shape \(11,\), expected \(12,\)"),
            (dict(inputs={inp: np.array([np.nan] + [0.0] * 11)}), RangeError, "NaN"),
            (dict(inputs={inp: np.array([1.5] + [0.0] * 11)}), RangeError, r"contains 1.5, out of range: allowed \[0, 1\]"),
            (dict(inputs={inp: np.array([-0.1] + [0.0] * 11)}), RangeError, "-0.1"),
            (dict(inputs={inp: np.array(["a"] * 12)}), ShapeError, "dtype"),
            (dict(inputs={hid: np.zeros(24)}), ValidationError, "not an input population"),
            (dict(inputs={"nope": good}), ValidationError, "not an input population"),
            (dict(inputs={}), ValidationError, "non-empty dict"),
            (dict(inputs={inp: good}, mode="poisson"), ValidationError, "mode = 'poisson'"),
            (dict(inputs={inp: good}, phase=1.0), RangeError, r"phase = 1.0 is out of range: allowed \[0, 1\)"),
            (dict(inputs={inp: good}, levels=100), RangeError, "levels = 100 must be a power of two"),
            (dict(inputs={inp: good}, seed=1 << 16), RangeError, r"seed = 65536 is out of range: allowed \[0, 65535\]"),
            (dict(inputs={inp: good}, steps=0), RangeError, "steps = 0"),
            (dict(inputs={inp: good}, steps=65536), RangeError, r"steps = 65536 is out of range: allowed \[1, 65535\]"),
        ]
        for kwargs, error, message in cases:
            with pytest.raises(error, match=message):
                chip.encode(**kwargs)
        assert backend.writes == []
    # more channels than the chip has: 12 inputs x 2 cores = 24 > 20
    small = CountingBackend(ChipShape(cores=2, neurons=16, axons=64, lanes=8, route_entries=128,
                                      encoder_channels=20))
    with Chip(small) as chip:
        chip.load(net)
        small.writes.clear()
        with pytest.raises(CapacityError, match=r"encoder channels: 24 needed .* the chip has 20") as info:
            chip.encode({inp: good})
        assert info.value.field == "encoder_channels" and small.writes == []
    none = CountingBackend(ChipShape(cores=2, neurons=16, axons=64, lanes=8, route_entries=128))
    with Chip(none) as chip:
        chip.load(net)
        assert none.writes and not any(w[0] is MemorySpace.ENCODER for w in none.writes)
        none.writes.clear()
        with pytest.raises(ValidationError, match="no input encoder") as info:
            chip.encode({inp: good})
        assert info.value.field == "encoder_channels" and none.writes == []


def test_encoder_layout_numbers_channels_by_population_then_core():
    net = Network()
    a, b = net.input(3, name="a"), net.input(2, name="b")
    hid = net.population(20, IF(threshold=10))
    net.connect(a, hid, weights=np.ones((3, 20)))
    net.connect(b, hid, weights=np.ones((2, 20)))
    with Chip(ModelBackend(SHAPE)) as chip:
        compiled = chip.load(net)
        layout = encoder_layout(compiled, [b, a], 40)
        assert layout.channels == 10
        expected = [(core, base + i) for pop in (b, a) for core, base in compiled.input_axons[pop]
                    for i in range(pop.size)]
        assert [tuple(t) for t in layout.targets.tolist()] == expected
        assert layout.spread({a: [7, 8, 9], b: [1, 2]}).tolist() == [1, 2, 1, 2, 7, 8, 9, 7, 8, 9]


def test_demo_classify_with_encoder_matches_streaming():
    from neurofabric.demos.digits import classify, load_data, train_mlp
    from neurofabric.host.convert import convert_mlp
    x_train, x_test, y_train, _ = load_data(0)
    weights, biases, _ = train_mlp(x_train[:300], y_train[:300], hidden=32, seed=0)
    conv = convert_mlp(weights, biases, x_train[:300])
    shape = ChipShape(cores=2, neurons=64, axons=128, lanes=8, route_entries=256, encoder_channels=64)
    with Chip(ModelBackend(shape)) as a, Chip(ModelBackend(shape)) as b:
        for chip in (a, b):
            chip.load(conv.network)
        on_chip = classify(a, conv, x_test[:12], 8, progress=False, reference=b)
        assert on_chip["encoder"] and on_chip["mismatches"] == []
        streamed = classify(a, conv, x_test[:12], 8, progress=False, encoder=False)
        assert not streamed["encoder"]
        for key in ("pred", "counts"):
            assert np.array_equal(on_chip[key], streamed[key])
        assert on_chip["synaptic_events"] == streamed["synaptic_events"]
