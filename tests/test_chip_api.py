"""Chip API on the model backend: input formats, validation, streaming, reset, weights read-back,
learning control, counters (host/chip.py, host/model_backend.py)."""

import dataclasses
import io

import numpy as np
import pytest

from neurofabric.hdl.protocol import MemorySpace
from neurofabric.host import IF, LIF, STDP, Chip, Network
from neurofabric.host.chip import DeviceUnavailable, Progress, parse_events
from neurofabric.host.model import ChipShape
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.network import EventError, ShapeError, ValidationError

SHAPE = ChipShape(cores=3, neurons=32, axons=64, lanes=8, route_entries=512)


def two_layer(seed=0):
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(10, name="in")
    hid = net.population(20, LIF(threshold=300, tau_mem=8), name="hid")
    out = net.population(5, IF(threshold=400), name="out")
    c1 = net.connect(inp, hid, weights=rng.integers(-40, 160, (10, 20)))
    c2 = net.connect(hid, out, weights=rng.integers(-60, 120, (20, 5)))
    return net, inp, hid, out, c1, c2


@pytest.fixture
def chip():
    with Chip(ModelBackend(SHAPE)) as c:
        yield c


def test_input_formats_agree(chip):
    net, inp, hid, out, *_ = two_layer()
    chip.load(net)
    rng = np.random.default_rng(5)
    raster = rng.random((25, 10)) < 0.3
    t, i = np.nonzero(raster)
    structured = np.zeros(len(t), dtype=[("x", "<i8"), ("t", "<f8"), ("p", "<i1")])
    structured["x"], structured["t"] = i, t * 1000.0 + 999.0          # microseconds, 1 ms steps
    forms = [raster, raster.astype(np.int64), np.stack([t, i], 1), (t, i), list(zip(t, i)),
             np.stack([t, i], 1)[::-1]]
    results = []
    for form in forms:
        results.append(chip.run({inp: form}, steps=30))
        chip.reset_state()
    results.append(chip.run({"in": structured}, steps=30, dt=1000.0))
    for r in results[1:]:
        np.testing.assert_array_equal(r.spikes(hid), results[0].spikes(hid))
        np.testing.assert_array_equal(r.spikes(out), results[0].spikes(out))
    assert len(results[0].spikes(hid)) > 20


def test_counts_raster_multiplicity(chip):
    net = Network()
    inp = net.input(3)
    pop = net.population(3, LIF(threshold=25))
    net.connect(inp, pop, weights=np.eye(3) * 10)
    chip.load(net)
    # two events on channel 0 in one step integrate twice: 20 < 25 no spike; three: 30 spikes
    r = chip.run({inp: np.array([[2, 0, 0], [3, 0, 0]])}, steps=2)
    assert r.spikes(pop).tolist() == [[1, 0]]
    assert r.raster(pop).tolist() == [[0, 0, 0], [1, 0, 0]]
    assert r.counts(pop).tolist() == [1, 0, 0]
    assert r.input_events == 5


@pytest.mark.parametrize("events, exc, match", [
    (np.zeros((40, 10), dtype=bool), ShapeError, "raster has shape"),
    (np.zeros((5, 11), dtype=bool), ShapeError, "shape"),
    (np.array([[0, 10]]), EventError, "index 10 is out of range"),
    (np.array([[30, 1]]), EventError, "step 30 is out of range"),
    (np.array([[-1, 1]]), EventError, "step -1"),
    (np.array([[0.5, 1]]), EventError, "integers"),
    (np.array([[np.nan, 1]]), EventError, "integers"),
    (np.array([[0, 1]]).astype(str), ShapeError, "integers"),
    (-np.ones((2, 10), dtype=np.int64), EventError, "counts must be >= 0"),
    ((np.array([0, 1]), np.array([1])), ShapeError, "equal length"),
    (np.zeros(3, dtype=[("a", "<i8"), ("t", "<i8")]), ShapeError, "index field"),
    (np.zeros((2, 3, 4)), ShapeError, "shape"),
])
def test_bad_events_send_nothing(chip, events, exc, match):
    net, inp, hid, out, *_ = two_layer()
    chip.load(net)
    step = chip.step()
    with pytest.raises(exc, match=match):
        chip.run({inp: events}, steps=30)
    assert chip.step() == step
    assert chip.backend.model._inputs == {}
    assert chip.run(steps=3).total_spikes() == 0


@pytest.mark.parametrize("call, exc, match", [
    (lambda c, n: c.run({n[1]: np.zeros((1, 20), bool)}, steps=1), ValidationError, "not an input population"),
    (lambda c, n: c.run({"nope": []}, steps=1), ValidationError, "not an input population"),
    (lambda c, n: c.run([], steps=1), ValidationError, "inputs must be a dict"),
    (lambda c, n: c.run(steps=0), ValidationError, "steps = 0"),
    (lambda c, n: c.run(steps=2, record=[n[1]]), ValidationError, "not routed to the host"),
    (lambda c, n: c.read_weights("w"), ValidationError, "not a connection"),
    (lambda c, n: c.set_reward(200), ValidationError, "reward = 200"),
    (lambda c, n: c.set_learning("yes"), ValidationError, "enabled"),
    (lambda c, n: c.set_plastic(n[4], True), ValidationError, "plastic"),
    (lambda c, n: c.read_state(n[2]), ValidationError, "not a neuron population"),
])
def test_api_validation(chip, call, exc, match):
    net, inp, hid, out, c1, c2 = two_layer()
    chip.load(net, record=[out])
    step = chip.step()
    with pytest.raises(exc, match=match):
        call(chip, (net, hid, inp, out, c1))
    assert chip.step() == step


def test_not_loaded_and_bad_devices():
    with Chip.open("model", shape=SHAPE) as chip:
        with pytest.raises(ValidationError, match="no network is loaded"):
            chip.run(steps=1)
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        Chip.open("usb://1")
    with pytest.raises(ValidationError, match="device must be a string"):
        Chip.open(3)
    with pytest.raises(ValidationError, match="Backend"):
        Chip(object())


def test_read_weights_and_state(chip):
    net, inp, hid, out, c1, c2 = two_layer()
    compiled = chip.load(net)
    assert compiled.weight_exp[compiled.slices_of(hid)[0].core] == 1      # max |w| 159 > 127
    np.testing.assert_array_equal(chip.read_weights(c1), np.round(c1.weights / 2) * 2)
    raw = chip.read_weights(c1, raw=True)
    np.testing.assert_array_equal(raw, np.round(c1.weights / 2))
    chip.run({inp: np.ones((3, 10), bool)}, steps=3)
    state = chip.read_state(hid)
    direct = chip.backend.model.state(compiled.slices_of(hid)[0].core)
    s = compiled.slices_of(hid)[0]
    np.testing.assert_array_equal(state["v"], direct["v"][s.offset:s.offset + 20])
    assert np.any(state["v"] != 0)


def test_reset_state_drops_spikes_in_flight(chip):
    net = Network()
    inp = net.input(1)
    a = net.population(1, LIF(threshold=10))
    b = net.population(1, LIF(threshold=10))
    net.connect(inp, a, weights=20)
    net.connect(a, b, weights=20)
    chip.load(net)
    r = chip.run({inp: [[0, 0]]}, steps=1)          # a fires in step 0; its spike is in flight
    assert r.spikes(a).tolist() == [[0, 0]] and len(r.spikes(b)) == 0
    chip.reset_state()
    r = chip.run(steps=3)
    assert r.total_spikes() == 0
    for p in (a, b):
        assert all(np.all(x == 0) for x in chip.read_state(p).values())
    # without the reset, b fires one step after a
    r = chip.run({inp: [[0, 0]]}, steps=2)
    assert r.spikes(b).tolist() == [[1, 0]]


def test_stream_matches_run(chip):
    net, inp, hid, out, *_ = two_layer()
    chip.load(net)
    raster = np.random.default_rng(2).random((100, 10)) < 0.2
    whole = chip.run({inp: raster}, steps=120)
    chip.reset_state()
    pieces = list(chip.stream({inp: raster}, steps=120, chunk=25))
    assert [p.steps for p in pieces] == [25, 25, 25, 25, 20]
    assert [p.steps for p in chip.stream(steps=10)] == [10]          # chunk (1024) longer than the run
    joined = np.concatenate([p.spikes(hid) + [k * 25, 0] for k, p in enumerate(pieces)])
    np.testing.assert_array_equal(joined, whole.spikes(hid))


class SmallQueue(ModelBackend):
    """The model with a tiny input queue, to exercise chunked injection."""
    def identify(self):
        return dataclasses.replace(super().identify(), input_queue=7)


def test_run_respects_input_queue():
    net, inp, hid, out, *_ = two_layer()
    raster = np.random.default_rng(3).random((50, 10)) < 0.25
    with Chip(ModelBackend(SHAPE)) as big, Chip(SmallQueue(SHAPE)) as small:
        big.load(net)
        small.load(net)
        injected = []
        inject = small.backend.inject
        small.backend.inject = lambda ev: (injected.append(len(ev)), inject(ev))
        a = big.run({inp: raster}, steps=60)
        b = small.run({inp: raster}, steps=60)
        np.testing.assert_array_equal(a.raw, b.raw)
        assert max(injected) <= 7 and sum(injected) == raster.sum()
        with pytest.raises(EventError, match="input queue holds 7"):
            small.run({inp: np.ones((2, 10), bool)}, steps=2)


def test_learning_control():
    net = Network()
    inp = net.input(8)
    pop = net.population(4, LIF(threshold=200))
    conn = net.connect(inp, pop, weights=40, plastic=STDP(a_plus=100, a_minus=30, shift=6, w_min=0))
    raster = np.random.default_rng(4).random((40, 8)) < 0.5
    with Chip(ModelBackend(SHAPE)) as chip:
        chip.load(net)
        w0 = chip.read_weights(conn)
        chip.set_learning(False)
        chip.run({inp: raster}, steps=40)
        np.testing.assert_array_equal(chip.read_weights(conn), w0)
        chip.set_learning(True)
        chip.set_plastic(conn, False)
        chip.run({inp: raster}, steps=40)
        np.testing.assert_array_equal(chip.read_weights(conn), w0)
        chip.set_plastic(conn, True)
        chip.set_reward(0)
        chip.run({inp: raster}, steps=40)
        np.testing.assert_array_equal(chip.read_weights(conn), w0)
        chip.set_reward(1)
        chip.run({inp: raster}, steps=40)
        assert np.any(chip.read_weights(conn) != w0)
        assert chip.read_weights(conn, raw=True).min() >= 0


def test_stats_count_the_run(chip):
    net, inp, hid, out, *_ = two_layer()
    chip.load(net)
    raster = np.random.default_rng(6).random((20, 10)) < 0.3
    before = chip.stats()
    r = chip.run({inp: raster}, steps=20)
    after = chip.stats()
    assert after["steps"] - before["steps"] == 20
    assert after["input_events"] - before["input_events"] == raster.sum()
    assert after["host_spikes"] - before["host_spikes"] == r.total_spikes() == len(r.raw)
    assert after["routed_events"] - before["routed_events"] == len(r.spikes(hid)) - np.sum(r.spikes(hid)[:, 0] == 19)


def test_progress_bar_output():
    stream = io.StringIO()
    with Progress(10, "work", enabled=True, stream=stream) as bar:
        for _ in range(10):
            bar.update(1)
    text = stream.getvalue()
    assert "work:" in text and "10/10" in text and text.endswith("\n")
    quiet = io.StringIO()
    with Progress(10, "work", enabled=False, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_parse_events_sorted_and_structured_dt():
    ev = np.zeros(3, dtype=[("t", "<f8"), ("x", "<i4")])
    ev["t"], ev["x"] = [2500.0, 100.0, 1000.0], [1, 2, 3]
    assert parse_events(ev, 4, 3, dt=1000.0).tolist() == [[0, 2], [1, 3], [2, 1]]
    with pytest.raises(EventError, match="dt"):
        parse_events(ev, 4, 3, dt=0)
    with pytest.raises(EventError, match="ambiguous"):
        parse_events(np.array([[0, 1], [1, 0]]), 2, 5)
    assert parse_events(np.zeros((0, 2), dtype=np.int64), 4, 3).shape == (0, 2)


def test_model_backend_memory_roundtrip():
    backend = ModelBackend(SHAPE)
    backend.write(MemorySpace.NEURON, 1, 3, [(-5 & 0xFFFFFF) | 2 << 24])
    assert backend.read(MemorySpace.NEURON, 1, 3, 1).tolist() == [(-5 & 0xFFFFFF) | 2 << 24]
    with pytest.raises(ValueError, match="nondecreasing"):
        backend.inject([[3, 0, 0], [2, 0, 0]])
    with pytest.raises(ValueError, match="axon 64"):
        backend.inject([[0, 0, 64]])
    backend.close()
    with pytest.raises(Exception, match="closed"):
        backend.identify()


def test_load_drops_spikes_in_flight(chip):
    net = Network()
    inp = net.input(1)
    a = net.population(1, LIF(threshold=10))
    b = net.population(1, LIF(threshold=10))
    net.connect(inp, a, weights=20)
    net.connect(a, b, weights=20)
    chip.load(net)
    assert chip.run({inp: [[0, 0]]}, steps=1).spikes(a).tolist() == [[0, 0]]   # a's spike is in flight
    chip.load(net)
    assert chip.run(steps=3).total_spikes() == 0


def test_chip_over_the_link_matches_the_model():
    """The same host code through LinkBackend into the gateware chip (Amaranth simulator):
    identical spikes, state and counters to the bit-exact model, across reset_state."""
    from neurofabric.hdl.top import LinkedChip, default_chip_factory
    from neurofabric.host.link import LinkBackend
    from neurofabric.sim.device import PysimTransport
    shape = ChipShape(cores=2, neurons=16, axons=16, lanes=8, route_entries=64)
    rng = np.random.default_rng(11)
    print("seed", 11)
    net = Network()
    inp = net.input(6)
    hid = net.population(10, LIF(threshold=300, tau_mem=8), bias=rng.integers(-10, 30, 10))
    out = net.population(4, IF(400))
    net.connect(inp, hid, weights=rng.integers(-50, 200, (6, 10)))
    net.connect(hid, out, weights=rng.integers(-60, 150, (10, 4)))
    transport = PysimTransport(LinkedChip(shape, chip_factory=default_chip_factory, input_queue=64),
                               timeout_cycles=200_000)
    with Chip(LinkBackend(transport, build="pysim")) as link, Chip(ModelBackend(shape)) as model:
        for chip in (link, model):
            chip.load(net)
        events = rng.random((10, 6)) < 0.4
        for _ in range(2):
            a, b = (chip.run({inp: events}, steps=12) for chip in (link, model))
            np.testing.assert_array_equal(a.raw, b.raw)
            assert len(a.raw) > 10
            for pop in (hid, out):
                sa, sb = link.read_state(pop), model.read_state(pop)
                for key in sa:
                    np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
            for chip in (link, model):
                chip.reset_state()
        sa, sb = link.stats(), model.stats()
        sa.pop("output_stalls"), sb.pop("output_stalls")
        assert sa == sb
