"""The compiler: placement, splitting, quantisation, routes, and compiled networks running on the
bit-exact model against an independent integer reference (host/compiler.py)."""

import numpy as np
import pytest

from neurofabric.hdl.protocol import MemorySpace, RouteKind
from neurofabric.host.backend import ChipInfo
from neurofabric.host.chip import Chip
from neurofabric.host.compiler import compile_network
from neurofabric.host.model import ChipShape
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.network import IF, LIF, STDP, CapacityError, Network, ValidationError


def info(cores=4, neurons=32, axons=64, route_entries=1024):
    return ChipInfo(version=1, cores=cores, neurons=neurons, axons=axons, lanes=8,
                    route_entries=route_entries, input_queue=1 << 20, build="test")


def small_chip(cores=4, neurons=32, axons=64, route_entries=1024):
    return Chip(ModelBackend(ChipShape(cores=cores, neurons=neurons, axons=axons, lanes=8,
                                       route_entries=route_entries)))


# --- an independent reference of the neuron equations (design.md section 4) ---------------------
def _decay(x, d):
    out = np.abs(x) * (4096 - d) // 4096
    return np.where(x < 0, -out, out)


def _sat(x):
    return np.clip(x, -(1 << 23), (1 << 23) - 1)


def reference_run(net, inputs, steps):
    """Spikes of every population: {pop: (steps, size) 0/1}, with one step of delay on every
    connection from a neuron population and none from inputs."""
    state = {p: {k: np.zeros(p.size, dtype=np.int64) for k in ("u", "v", "ref", "theta")}
             for p in net.populations if not p.is_input}
    spikes = {p: np.zeros((steps, p.size), dtype=np.int64) for p in net.populations}
    for p, raster in inputs.items():
        spikes[p][:len(raster)] = raster
    for t in range(steps):
        for p, s in state.items():
            prof = p.neuron.profile()
            acc = np.zeros(p.size, dtype=np.int64)
            for c in net.connections:
                if c.post is p:
                    src = spikes[c.pre][t] if c.pre.is_input else (spikes[c.pre][t - 1] if t else 0 * spikes[c.pre][0])
                    acc += (src @ c.weights).astype(np.int64)
            s["u"] = _sat(_decay(s["u"], prof.du) + acc)
            s["theta"] = _decay(s["theta"], prof.dtheta)
            active = s["ref"] == 0
            v = _sat(_decay(s["v"], prof.dv) + s["u"] + p.bias)
            thr = prof.threshold + s["theta"]
            fired = active & (v >= thr)
            after = _sat(v - thr) if prof.reset_mode.name == "SUBTRACT" else np.full(p.size, prof.v_reset)
            s["v"] = np.where(fired, after, np.where(active, v, s["v"]))
            s["ref"] = np.where(fired, prof.refractory, np.where(active, 0, s["ref"] - 1))
            s["theta"] = np.where(fired, s["theta"] + prof.theta_plus, s["theta"])
            spikes[p][t] = fired
    return spikes


def random_layered_net(rng, sizes, exps, neurons):
    """A feed-forward net whose weights are exact multiples of 2**exp (so quantisation is exact)."""
    net = Network()
    prev = net.input(sizes[0])
    inputs = prev
    pops = []
    for i, (size, e) in enumerate(zip(sizes[1:], exps)):
        neuron = [LIF(threshold=int(rng.integers(200, 2000)), tau_mem=float(rng.uniform(2, 40)),
                      tau_syn=float(rng.uniform(1, 8)), refractory=int(rng.integers(0, 3))),
                  IF(threshold=int(rng.integers(300, 1500))),
                  LIF(threshold=800, dv=300, reset="value", v_reset=-200, theta_plus=50, dtheta=100)][i % 3]
        pop = net.population(size, neuron, bias=rng.integers(-20, 60, size))
        w = rng.integers(-127, 128, (prev.size, size)) * (rng.random((prev.size, size)) < 0.5)
        w[0, 0] = 127       # pin the exponent: max |w| is exactly 127 << e
        net.connect(prev, pop, weights=w * (1 << e))
        pops.append(pop)
        prev = pop
    return net, inputs, pops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_network_matches_reference(seed):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    neurons = 32
    # layer 1 (50 neurons) splits over two cores; layers 2 and 3 are small and get packed
    net, inp, pops = random_layered_net(rng, [40, 50, 20, 12], [2, 2, 2], neurons)
    steps = 40
    raster = (rng.random((30, inp.size)) < 0.3).astype(np.int64)
    expected = reference_run(net, {inp: raster}, steps)
    with small_chip(cores=4, neurons=neurons, axons=64) as chip:
        compiled = chip.load(net)
        assert len(compiled.slices_of(pops[0])) == 2
        result = chip.run({inp: raster}, steps=steps)
        for p in pops:
            np.testing.assert_array_equal(result.raster(p), expected[p], err_msg=p.name)
        assert sum(expected[p].sum() for p in pops) > 50   # the test exercises spikes
        for r in compiled.reports:
            assert r.clipped == 0 and r.max_error == 0.0


def test_exponent_per_core_and_report():
    net = Network()
    inp = net.input(4)
    a = net.population(3)
    b = net.population(3)
    w = np.array([[1000.0, -3, 0], [5, 7, 100], [0, 0, 0], [1, 2, 3]])
    net.connect(inp, a, weights=w)
    net.connect(inp, b, weights=np.full((4, 3), 1.0))
    compiled = compile_network(net, info(neurons=32))
    # both populations share core 0: one exponent for the largest weight (1000 <= 127 << 3)
    assert compiled.weight_exp == {0: 3}
    ra, rb = compiled.reports
    assert ra.scale == 8.0 and ra.weight_exp == (3,)
    expected_q = np.clip(np.round(w / 8), -128, 127)
    assert ra.zeroed == int(np.count_nonzero((expected_q == 0) & (w != 0)))
    assert ra.max_error == pytest.approx(np.abs(w - expected_q * 8).max())
    assert rb.zeroed == 12 and rb.max_error == 1.0        # 1.0 rounds to 0 at scale 8
    weights = next(x for x in compiled.writes if x.space is MemorySpace.WEIGHT).words.reshape(-1, 32)
    np.testing.assert_array_equal(weights[:4, :3], expected_q)


def test_placement_rules():
    net = Network()
    inp = net.input(10)
    big = net.population(70, LIF(threshold=100))            # 3 slices of <= 32
    small = net.population(5, LIF(threshold=200))
    learner = net.population(4, LIF(threshold=300))
    net.connect(inp, big, weights=1)
    net.connect(big, small, weights=1)
    net.connect(inp, learner, weights=1, plastic=STDP())
    compiled = compile_network(net, info(cores=6, neurons=32, axons=80))
    spans = [(s.population.name, s.start, s.stop, s.core, s.offset) for s in compiled.slices]
    assert spans[:3] == [(big.name, 0, 32, 0, 0), (big.name, 32, 64, 1, 0), (big.name, 64, 70, 2, 0)]
    # `small` is packed next to big's last slice (profiles 2 <= 8, axons 10 + 70 <= 80)
    assert spans[3] == (small.name, 0, 5, 2, 6)
    # the plastic population gets a core of its own
    assert spans[4][3] == 3 and compiled.plastic_cores.keys() == {3}
    assert compiled.axon_blocks[(2, inp)] == 0 and compiled.axon_blocks[(2, big)] == 10
    assert compiled.input_axons[inp] == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_more_than_eight_profiles_opens_a_new_core():
    net = Network()
    inp = net.input(2)
    pops = [net.population(1, LIF(threshold=100 + i)) for i in range(9)]
    for p in pops:
        net.connect(inp, p, weights=1)
    compiled = compile_network(net, info(cores=2, neurons=32))
    assert [s.core for s in compiled.slices] == [0] * 8 + [1]


def test_routes_decode():
    net = Network()
    inp = net.input(3)
    hid = net.population(40)
    out = net.population(2)
    net.connect(inp, hid, weights=1)
    net.connect(hid, out, weights=1)
    compiled = compile_network(net, info(cores=4, neurons=32, axons=64), record=[out])
    writes = {w.space: w for w in compiled.writes if w.space in (MemorySpace.ROUTE_POINTER, MemorySpace.ROUTE_ENTRY)}
    pointers = writes[MemorySpace.ROUTE_POINTER].words
    entries = writes[MemorySpace.ROUTE_ENTRY].words
    out_slice = compiled.slices_of(out)[0]
    out_base = compiled.axon_blocks[(out_slice.core, hid)]
    for s in compiled.slices:
        for i in range(s.start, s.stop):
            p = int(pointers[s.core * 32 + s.offset + i - s.start])
            base, count = p & 0xFFFF, p >> 16
            decoded = [(int(e) >> 30 & 1, int(e) >> 16 & 0xFF, int(e) & 0xFFFF) for e in entries[base:base + count]]
            if s.population is hid:     # not recorded: one entry to out's core and axon
                assert decoded == [(RouteKind.AXON.value, out_slice.core, out_base + i)]
            else:                       # recorded output: one host entry
                assert decoded == [(RouteKind.HOST.value, 0, 0)]
    assert compiled.route_entries_used == 42


@pytest.mark.parametrize("build, exc, match", [
    (lambda n: n.population(200), CapacityError, "cores"),
    (lambda n: n.connect(n.input(70), n.population(2), weights=1), CapacityError, "axons"),
])
def test_capacity_errors(build, exc, match):
    net = Network()
    net.connect(net.input(1), net.population(1), weights=1)
    build(net)
    with pytest.raises(exc, match=match):
        compile_network(net, info(cores=4, neurons=32, axons=64))


def test_route_table_capacity():
    net = Network()
    inp = net.input(4)
    pop = net.population(30)
    net.connect(inp, pop, weights=1)
    with pytest.raises(CapacityError, match="route table needs 30 entries"):
        compile_network(net, info(route_entries=20))


def test_network_without_neurons_or_bad_record():
    net = Network()
    net.input(3)
    with pytest.raises(ValidationError, match="no neuron populations"):
        compile_network(net, info())
    pop = net.population(2)
    with pytest.raises(ValidationError, match="record"):
        compile_network(net, info(), record=[Network().population(2)])
    assert compile_network(net, info(), record=[]).recorded == frozenset()
    assert pop.name


def test_failed_load_changes_nothing():
    with small_chip() as chip:
        good = Network()
        inp = good.input(2)
        pop = good.population(2, LIF(threshold=10))
        good.connect(inp, pop, weights=20)
        chip.load(good)
        before = chip.backend.read(MemorySpace.WEIGHT, 0, 0, 64)
        bad = Network()
        bad.connect(bad.input(1), bad.population(500), weights=1)
        with pytest.raises(CapacityError):
            chip.load(bad)
        np.testing.assert_array_equal(chip.backend.read(MemorySpace.WEIGHT, 0, 0, 64), before)
        assert chip.compiled.network is good
        assert chip.run({inp: np.array([[True, False]])}, steps=2).spikes(pop).tolist() == [[0, 0], [0, 1]]


def test_report_counts_synapses_and_conv_kernel_words():
    from neurofabric.host import lowering
    rng = np.random.default_rng(4)
    kernel = rng.integers(-100, 100, (3, 1, 3, 3)).astype(np.float64)
    conv = lowering.Conv.make(kernel, (1, 6, 6), stride=1, padding=1)
    weights, _ = lowering.lower([conv], 36)
    net = Network()
    inp = net.input(36)
    out = net.population(3 * 36, IF(500))
    with pytest.raises(ValidationError, match="structure lowers to"):
        net.connect(inp, out, weights=weights * 2, structure=[conv])
    c = net.connect(inp, out, weights=weights, structure=[conv])
    report = compile_network(net, info(cores=1, neurons=128, axons=64)).reports[0]
    assert report.connection is c and report.kernel_words == 27
    # every output position sees the kernel entries that fall inside the (zero-padded) image
    assert report.synapses == int(np.count_nonzero(weights)) and 27 < report.synapses < weights.size
