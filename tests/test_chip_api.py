"""Chip API on the model backend: input formats, validation, streaming, reset, weights read-back,
learning control, counters (host/chip.py, host/model_backend.py)."""

import dataclasses
import io
import re

import numpy as np
import pytest

from neurofabric.hdl.protocol import MemorySpace
from neurofabric.host import IF, LIF, STDP, Chip, Network
from neurofabric.host.chip import DeviceUnavailable, Progress, parse_events
from neurofabric.host.model import ChipShape
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.network import CapacityError, EventError, ShapeError, ValidationError

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


# --- one interface on every backend (issue: capabilities, load order, spike order, arguments) ----
class _Limited(ModelBackend):
    """The model reporting a chip without some capability (as a board build may)."""

    def __init__(self, shape, **changes):
        super().__init__(shape)
        self.changes = changes

    def identify(self):
        return dataclasses.replace(super().identify(), **self.changes)


def _plastic_net(w_min, w_max, seed=0):
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(8, name="in")
    hid = net.population(6, LIF(threshold=200, tau_mem=8), name="hid")
    conn = net.connect(inp, hid, weights=rng.integers(w_min, w_max + 1, (8, 6)),
                       plastic=STDP(w_min=w_min, w_max=w_max))
    return net, inp, hid, conn


def test_default_shape_is_the_same_for_model_and_sim():
    from neurofabric.host.backend import DEFAULT_SHAPE
    from neurofabric.host.model_backend import DEFAULT_MODEL_SHAPE
    from neurofabric.sim.device import DEFAULT_SHAPE as SIM_DEFAULT_SHAPE
    assert DEFAULT_MODEL_SHAPE == SIM_DEFAULT_SHAPE == DEFAULT_SHAPE
    with Chip.open("model") as chip:
        info = chip.info
    assert (info.cores, info.neurons, info.axons, info.lanes, info.route_entries, info.encoder_channels) == (
        DEFAULT_SHAPE.cores, DEFAULT_SHAPE.neurons, DEFAULT_SHAPE.axons, DEFAULT_SHAPE.lanes,
        DEFAULT_SHAPE.route_entries, DEFAULT_SHAPE.encoder_channels)


def test_host_and_boards_never_import_sim():
    """The dependency direction: named devices come from the registry; opening "model" loads no
    module of neurofabric.sim."""
    import ast
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    for folder in ("host", "boards", "hdl"):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.startswith("neurofabric.sim") for n in names), (path, node.lineno)
    code = ("import sys; from neurofabric.host import Chip; Chip.open('model').close(); "
            "print(sorted(m for m in sys.modules if m.startswith('neurofabric.sim')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_open_arguments_raise_validation_errors_naming_the_option():
    with pytest.raises(ValidationError) as info:
        Chip.open("model", shap=SHAPE)
    assert info.value.field == "shap" and "shape" in info.value.allowed
    with pytest.raises(ValidationError) as info:
        Chip.open("model", shape=(2, 64, 64))
    assert info.value.field == "shape" and info.value.allowed
    # a typo in a "sim" option is named before anything is built, and does not point to "model"
    with pytest.raises(ValidationError) as info:
        Chip.open("sim", shpe=SHAPE)
    assert info.value.field == "shpe" and "shape" in info.value.allowed and "model" not in str(info.value)
    with pytest.raises(ValidationError) as info:
        Chip.open("sim", chip="chip:fast")
    assert info.value.field == "chip" and "chip:inference" in info.value.allowed


def test_serial_errors_are_device_unavailable_with_a_hint(tmp_path):
    import socket
    import time
    with pytest.raises(DeviceUnavailable, match="cannot be opened.*plugged in"):
        Chip.open(f"serial://{tmp_path}/ttyUSB9")
    with pytest.raises(ValidationError) as info:
        Chip.open("serial:///dev/null", baud=9600)
    assert info.value.field == "baud" and "baudrate" in info.value.allowed
    with socket.socket() as server:            # a port that accepts and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="no chip answers.*bitstream loaded.*baudrate"):
            Chip.open(f"socket://127.0.0.1:{server.getsockname()[1]}")
        assert time.monotonic() - t0 < 5


def test_plastic_network_refused_by_a_chip_without_learning():
    net, *_ = _plastic_net(-20, 40)
    chip = Chip(_Limited(SHAPE, learning=False))
    with pytest.raises(CapacityError, match="no learning cores") as info:
        chip.load(net)
    assert (info.value.field, info.value.value, info.value.allowed) == ("learning", False, (True,))
    assert chip.compiled is None
    with Chip(ModelBackend(SHAPE)) as learning_chip:
        learning_chip.load(net)


def test_capacity_error_names_a_shape_that_fits():
    rng = np.random.default_rng(1)
    net = Network()
    inp = net.input(40)
    hid = net.population(100, LIF(threshold=400))
    net.connect(inp, hid, weights=rng.integers(-20, 60, (40, 100)))
    net.connect(hid, net.population(10, IF(threshold=300)), weights=rng.integers(0, 20, (100, 10)))
    small = ChipShape(cores=2, neurons=64, axons=64, lanes=8, route_entries=256)
    with Chip.open("model", shape=small) as chip, pytest.raises(CapacityError) as info:
        chip.load(net)
    message = str(info.value)
    assert 'Chip.open("sim", shape=...)' in message and info.value.allowed is not None
    fields = dict(re.findall(r"(\w+)=(\d+)", message.split("it fits ChipShape(")[1].split(")")[0]))
    with Chip.open("model", shape=ChipShape(**{k: int(v) for k, v in fields.items()})) as chip:
        chip.load(net)


@pytest.mark.parametrize("first, second", [((-100, -90), (50, 60)), ((50, 60), (-100, -90))])
def test_load_does_not_depend_on_the_previous_network(first, second):
    """Weight bounds of the previous network (w_min above the old w_max, or w_max below the old
    w_min) do not stop a load; the result equals a load on a fresh chip."""
    net_a, *_ = _plastic_net(*first)
    net_b, inp, hid, conn = _plastic_net(*second, seed=3)
    raster = np.random.default_rng(4).random((30, 8)) < 0.4
    results = []
    for previous in (net_a, None):
        with Chip(ModelBackend(SHAPE)) as chip:
            if previous is not None:
                chip.load(previous)
            chip.load(net_b)
            chip.set_learning(True)
            out = chip.run({inp: raster}, steps=30)
            results.append((out.raw[:, 1:].tolist(), out.spikes(hid).tolist(), chip.read_weights(conn, raw=True)))
    assert results[0][:2] == results[1][:2]
    assert np.array_equal(results[0][2], results[1][2])


class _FailingWrite(ModelBackend):
    def __init__(self, shape, fail_at):
        super().__init__(shape)
        self.fail_at, self.writes = fail_at, 0

    def write(self, space, core, addr, words):
        self.writes += 1
        if self.writes == self.fail_at:
            raise DeviceUnavailable("the cable came out")
        super().write(space, core, addr, words)


def test_a_failed_load_leaves_no_network_and_says_so():
    net, inp, hid, out, *_ = two_layer()
    chip = Chip(_FailingWrite(SHAPE, fail_at=3))
    with pytest.raises(DeviceUnavailable) as info:
        chip.load(net)
    assert any("no network is loaded now" in note for note in info.value.__notes__)
    assert chip.compiled is None
    with pytest.raises(ValidationError, match="no network is loaded"):
        chip.run(steps=1)
    chip.load(net)                  # a retry starts from scratch and succeeds
    assert chip.run({inp: np.ones((3, 10), bool)}, steps=3).steps == 3


class _Shuffled(ModelBackend):
    """The model emitting each run's spikes in reverse order (as the sim device may interleave
    the cores' spikes within a step)."""

    def run(self, steps):
        return super().run(steps)[::-1]


def test_spikes_in_one_order_on_every_backend():
    net, inp, hid, out, *_ = two_layer(5)
    raster = np.random.default_rng(5).random((25, 10)) < 0.5
    results = []
    for backend in (ModelBackend(SHAPE), _Shuffled(SHAPE)):
        with Chip(backend) as chip:
            chip.load(net)
            results.append(chip.run({inp: raster}, steps=25))
    a, b = results
    assert len(a.raw) > 20
    for r in results:
        assert np.array_equal(r.raw, r.raw[np.lexsort((r.raw[:, 2], r.raw[:, 1], r.raw[:, 0]))])
    assert np.array_equal(a.raw, b.raw)
    for pop in (hid, out):
        assert np.array_equal(a.spikes(pop), b.spikes(pop))


def test_tau_inf_means_no_decay():
    import math
    neuron = LIF(tau_mem=math.inf, tau_syn=math.inf, tau_theta=math.inf)
    assert neuron.decays() == (0, 0, 0)
    with pytest.raises(ValidationError):
        LIF(tau_mem=-math.inf)
    with pytest.raises(ValidationError):
        LIF(tau_mem=math.nan)


def test_close_twice_is_harmless():
    chip = Chip.open("model", shape=SHAPE)
    chip.close()
    chip.close()


def test_huge_count_cell_is_an_event_error_before_expansion():
    net, inp, *_ = two_layer()
    with Chip.open("model", shape=SHAPE) as chip:
        chip.load(net)
        raster = np.zeros((2, 10), dtype=np.int64)
        raster[1, 3] = 10 ** 15
        with pytest.raises(EventError, match="step 1 has") as info:
            chip.run({inp: raster}, steps=2)
        assert info.value.allowed == (0, chip.info.input_queue)


def test_set_plastic_requires_a_bool():
    net, inp, hid, conn = _plastic_net(-20, 40)
    with Chip.open("model", shape=SHAPE) as chip:
        chip.load(net)
        for bad in ("no", 0, None):
            with pytest.raises(ValidationError, match="True or False") as info:
                chip.set_plastic(conn, bad)
            assert info.value.allowed == (True, False)
        chip.set_plastic(conn, False)
        assert chip.backend.read(MemorySpace.PLASTIC, 0, 0, 8).tolist() == [0] * 8


def test_record_takes_a_population_a_name_or_a_list():
    net, inp, hid, out, *_ = two_layer()
    raster = np.ones((4, 10), bool)
    with Chip.open("model", shape=SHAPE) as chip:
        chip.load(net)
        by_list = chip.run({inp: raster}, steps=4, record=[hid])
        chip.reset_state()
        by_pop = chip.run({inp: raster}, steps=4, record=hid)
        chip.reset_state()
        by_name = chip.run({inp: raster}, steps=4, record="hid")
        assert by_list.recorded == by_pop.recorded == by_name.recorded == [hid]
        assert np.array_equal(by_list.spikes(hid), by_name.spikes(hid))
        for bad in ("p", "hi", ["hid", "x"], 3):
            with pytest.raises(ValidationError) as info:
                chip.run(steps=1, record=bad)
            assert info.value.field == "record" and info.value.allowed == ("hid", "out")


def test_nan_errors_give_position_value_and_allowed():
    net, inp, *_ = two_layer()
    with Chip.open("model", shape=SHAPE) as chip:
        chip.load(net)
        raster = np.zeros((3, 10))
        raster[2, 7] = np.nan
        with pytest.raises(EventError, match=r"position \(2, 7\)") as info:
            chip.run({inp: raster}, steps=3)
        assert np.isnan(info.value.value) and info.value.allowed
    with Chip.open("model") as chip:
        chip.load(net)
        x = np.full(10, 0.5)
        x[4] = np.nan
        with pytest.raises(ValidationError, match=r"contains NaN, .* \(at position 4\)") as info:
            chip.encode({inp: x})
        assert np.isnan(info.value.value) and info.value.allowed == (0, 1)
    small = Network()
    a, b = small.input(2), small.population(3)
    weights = np.ones((2, 3))
    weights[1, 2] = np.nan
    with pytest.raises(ValidationError, match=r"weights\[1, 2\] = nan") as info:
        small.connect(a, b, weights=weights)
    assert np.isnan(info.value.value) and info.value.allowed


def test_encoding_on_a_chip_without_encoder_is_refused():
    net, inp, *_ = two_layer()
    with Chip.open("model", shape=SHAPE) as chip:
        chip.load(net)
        with pytest.raises(CapacityError, match="no input encoder") as info:
            chip.encode({inp: np.full(10, 0.5)})
        assert info.value.field == "encoder_channels"


def test_every_validation_error_in_the_host_library_names_what_is_allowed():
    """Every raise of a ValidationError family member in these modules passes field, value and
    allowed."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    family = {"ValidationError", "RangeError", "ShapeError", "CapacityError", "EventError"}
    for name in ("host/chip.py", "host/network.py", "host/backend.py", "host/model_backend.py",
                 "host/encoding.py", "sim/device.py", "pkg/cli.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if getattr(func, "id", getattr(func, "attr", None)) in family:
                    given = len(node.exc.args) + sum(k.arg in ("field", "value", "allowed") for k in node.exc.keywords)
                    assert given >= 4, f"{name}:{node.lineno} raises without field, value and allowed"
