"""The AER router against a reference model (Amaranth simulator; Verilator for the long soaks).

The reference: every spike of source core ``c``, neuron ``n`` becomes one event per route entry
of ``(c, n)``, in entry order. Route tables are built so that the axon number identifies the
source core at every destination, so each (source core, destination) stream is checked in full
order: nothing lost, duplicated, misrouted or reordered; fan-out = route-table count.
"""

import json
import os
import random
import time
from types import SimpleNamespace

import pytest
from amaranth.sim import Simulator

from neurofabric.hdl.protocol import EventKind, MemorySpace
from neurofabric.hdl.router import (
    MEM_OK,
    MEM_REFUSED,
    RoundRobinArbiter,
    Router,
    route_entry_bits,
    route_pointer_bits,
)
from neurofabric.host.model import ChipModel, ChipShape
from neurofabric.sim.streams import mem_transaction

SHAPE = ChipShape(cores=3, neurons=16, axons=48, lanes=1, route_entries=128)


async def mem_access(ctx, dut, space, addr, data=0, write=False, budget=100):
    """One request on `dut.mem`; returns its response word (each wait bounded by `budget`)."""
    return await mem_transaction(ctx, dut, {"mem": space, "addr": addr, "data": data, "write": int(write)}, budget)


def random_routes(shape, rng, max_fanout=4, host_probability=0.2):
    """A random route table {(core, neuron): [("axon", core, axon) | ("host",)]} that fits the
    table, whose axon numbers at every destination name the source core (axon // span)."""
    span = shape.axons // shape.cores
    routes, used = {}, 0
    for core in range(shape.cores):
        for neuron in range(shape.neurons):
            entries = []
            for _ in range(rng.randint(0, max_fanout)):
                if rng.random() < host_probability:
                    entries.append(("host",))
                else:
                    entries.append(("axon", rng.randrange(shape.cores), core * span + rng.randrange(span)))
            entries = entries[:shape.route_entries - used]
            used += len(entries)
            routes[(core, neuron)] = entries
    return routes


def route_table_writes(shape, routes, rng):
    """(space, addr, data) writes loading `routes`, entries placed in a shuffled order of sources."""
    sources = list(routes)
    rng.shuffle(sources)
    writes, base = [], 0
    for core, neuron in sources:
        entries = routes[(core, neuron)]
        writes.append((MemorySpace.ROUTE_POINTER, core * shape.neurons + neuron,
                       route_pointer_bits(base, len(entries))))
        for i, e in enumerate(entries):
            bits = route_entry_bits(host=True) if e[0] == "host" else route_entry_bits(core=e[1], axon=e[2])
            writes.append((MemorySpace.ROUTE_ENTRY, base + i, bits))
        base += len(entries)
    return writes


def reference(shape, routes, spikes):
    """Expected outputs: {("axon", core): [axon, ...] per source core, ("host",): [(core, n)]}.

    Returns (axon_by_source, host_by_source): dicts keyed by (destination, source core) holding
    the ordered list each source must produce at each destination."""
    axon_by_source, host_by_source = {}, {}
    for core, neuron_list in enumerate(spikes):
        for neuron in neuron_list:
            for e in routes[(core, neuron)]:
                if e[0] == "host":
                    host_by_source.setdefault(core, []).append(neuron)
                else:
                    axon_by_source.setdefault((e[1], core), []).append(e[2])
    return axon_by_source, host_by_source


def check_outputs(shape, routes, spikes, axon_out, host_out):
    """Compare what came out with the reference; returns the figures (all errors must be 0)."""
    span = shape.axons // shape.cores
    want_axon, want_host = reference(shape, routes, spikes)
    got_axon, got_host = {}, {}
    for dest, axons in enumerate(axon_out):
        for axon in axons:
            got_axon.setdefault((dest, axon // span), []).append(axon)
    for core, neuron in host_out:
        got_host.setdefault(core, []).append(neuron)
    for key in set(want_axon) | set(got_axon):
        assert got_axon.get(key, []) == want_axon.get(key, []), \
            f"axon events from core {key[1]} to core {key[0]} differ (lost, duplicated, misrouted or reordered)"
    for key in set(want_host) | set(got_host):
        assert got_host.get(key, []) == want_host.get(key, []), f"host events from core {key} differ"
    expected = sum(map(len, want_axon.values())) + sum(map(len, want_host.values()))
    return expected


def run_router(shape, routes, spikes, ready_probability, seed, budget_per_event=64, spike_fifo_depth=4,
               axon_fifo_depth=8, host_fifo_depth=8, check_table=True, writes=None):
    """Simulate the router: load `routes`, push `spikes[c]` into core c back to back, drain with
    `ready_probability` on every output; returns (axon_out, host_out, cycles)."""
    rng = random.Random(seed)
    dut = Router(shape, spike_fifo_depth=spike_fifo_depth, axon_fifo_depth=axon_fifo_depth,
                 host_fifo_depth=host_fifo_depth)
    if writes is None:
        writes = route_table_writes(shape, routes, rng)
    want_axon, want_host = reference(shape, routes, spikes)
    want_per_dest = [sum(len(v) for (d, _), v in want_axon.items() if d == dest) for dest in range(shape.cores)]
    want_hosts = sum(map(len, want_host.values()))
    total = sum(want_per_dest) + want_hosts
    budget = 2000 + budget_per_event * (total + sum(map(len, spikes)))
    axon_out = [[] for _ in range(shape.cores)]
    host_out = []
    cycles = [0, 0]
    loaded = [False]

    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def load(ctx):
        for space, addr, data in writes:
            resp = await mem_access(ctx, dut, space, addr, data, write=True)
            assert resp == MEM_OK, f"write {space.name}[{addr}] = {data:#x} refused"
        if check_table:
            for space, addr, data in writes[:20]:
                resp = await mem_access(ctx, dut, space, addr)
                assert resp == data, f"read back {space.name}[{addr}] = {resp:#x}, wrote {data:#x}"
        loaded[0] = True

    def driver(core):
        async def bench(ctx):
            while not loaded[0]:
                await ctx.tick()
            stream = dut.spikes[core]
            for neuron in spikes[core]:
                ctx.set(stream.payload, neuron)
                ctx.set(stream.valid, 1)
                for _ in range(budget):
                    _, _, ready = await ctx.tick().sample(stream.ready)
                    if ready:
                        break
                else:
                    raise AssertionError(f"core {core}: spike not accepted within {budget} cycles")
            ctx.set(stream.valid, 0)
        return bench

    def sink(stream, store, count, pattern_seed, host):
        async def bench(ctx):
            ready_rng = random.Random(pattern_seed)
            n = 0
            for _ in range(budget):
                if n == count:
                    break
                ready = ready_probability >= 1.0 or ready_rng.random() < ready_probability
                ctx.set(stream.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
                if ready and valid:
                    store.append((payload.core, payload.index) if host else payload)
                    assert not host or payload.kind == EventKind.SPIKE
                    n += 1
            else:
                raise AssertionError(f"only {n} of {count} events arrived within {budget} cycles")
            ctx.set(stream.ready, 0)
            # nothing more may come out: watch a while, and the router must then be idle
            for _ in range(64):
                _, _, valid = await ctx.tick().sample(stream.valid)
                assert not valid, "an unexpected extra event"
        return bench

    async def watch(ctx):
        while not loaded[0]:
            await ctx.tick()
        cycles[0] = 0
        while True:
            _, _, busy = await ctx.tick().sample(dut.busy)
            cycles[0] += 1
            if busy:
                cycles[1] = cycles[0]

    sim.add_testbench(load)
    for c in range(shape.cores):
        sim.add_testbench(driver(c))
        sim.add_testbench(sink(dut.axons[c], axon_out[c], want_per_dest[c], seed * 31 + c, False))
    sim.add_testbench(sink(dut.host, host_out, want_hosts, seed * 31 + 99, True))
    sim.add_process(watch)
    sim.run()
    return axon_out, host_out, cycles


def random_spikes(shape, rng, count):
    return [[rng.randrange(shape.neurons) for _ in range(count)] for _ in range(shape.cores)]


@pytest.mark.parametrize("ready_probability", [1.0, 0.5, 0.1])
def test_router_random(ready_probability):
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = random.Random(seed)
    routes = random_routes(SHAPE, rng)
    spikes = random_spikes(SHAPE, rng, 200 if ready_probability > 0.2 else 80)
    axon_out, host_out, _ = run_router(SHAPE, routes, spikes, ready_probability, seed, spike_fifo_depth=2,
                                       axon_fifo_depth=2, host_fifo_depth=2)
    assert check_outputs(SHAPE, routes, spikes, axon_out, host_out) > 100


def test_router_extremes():
    """Maximum fan-out (255 entries), empty routes, every entry to one core, the last neuron and
    the last axon; a non-power-of-two neuron count."""
    shape = ChipShape(cores=2, neurons=5, axons=8, lanes=1, route_entries=300)
    routes = {(c, n): [] for c in range(2) for n in range(5)}
    routes[(1, 4)] = [("axon", 1, 4 + (i % 4)) for i in range(255)]           # axons 4..7: source 1
    routes[(0, 4)] = [("axon", 1, 2), ("host",), ("axon", 0, 0)]
    routes[(0, 0)] = [("host",)] * 40
    spikes = [[4, 0, 3, 4], [4, 2, 4]]
    axon_out, host_out, _ = run_router(shape, routes, spikes, 0.5, 7)
    assert check_outputs(shape, routes, spikes, axon_out, host_out) == 2 * 255 + 2 * 3 + 40


def test_router_matches_model_route_tables():
    """Pointers anywhere in 16 bits, wrapping past the end of a non-power-of-two table, entries
    shared between sources: the router reads exactly ChipModel.routes_of (spikes of one core,
    so every destination's sequence is checked in order)."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = random.Random(seed)
    shape = ChipShape(cores=2, neurons=4, axons=8, lanes=1, route_entries=10)
    model = ChipModel(shape)
    writes = []
    for addr in range(shape.route_entries):
        word = route_entry_bits(host=True) if rng.random() < 0.3 else route_entry_bits(
            core=rng.randrange(2), axon=rng.randrange(8))
        writes.append((MemorySpace.ROUTE_ENTRY, addr, word))
    for source in range(shape.cores * shape.neurons):
        base = rng.choice([0, 7, 9, rng.randrange(1 << 16), (1 << 16) - 1])
        writes.append((MemorySpace.ROUTE_POINTER, source, route_pointer_bits(base, rng.choice([0, 1, 3, 12, 255]))))
    for space, addr, word in writes:
        model.write_words(space, 0, addr, [word])
    routes = {(c, n): [("host",) if r.host else ("axon", r.core, r.axon) for r in model.routes_of(c, n)]
              for c in range(2) for n in range(4)}
    spikes = [[rng.randrange(4) for _ in range(12)], []]
    axon_out, host_out, _ = run_router(shape, routes, spikes, 0.5, seed, writes=writes)
    want_axon, want_host = reference(shape, routes, spikes)
    for dest in range(2):
        assert axon_out[dest] == want_axon.get((dest, 0), [])
    assert [n for _, n in host_out] == want_host.get(0, [])


def test_router_throughput():
    """One entry per cycle: a single-entry route per spike sustains ~1 event/cycle."""
    rng = random.Random(3)
    routes = {(c, n): [("axon", (c + 1) % 3, c * 16 + n)] for c in range(3) for n in range(16)}
    spikes = random_spikes(SHAPE, rng, 100)
    axon_out, host_out, cycles = run_router(SHAPE, routes, spikes, 1.0, 3)
    total = check_outputs(SHAPE, routes, spikes, axon_out, host_out)
    assert total == 300
    assert cycles[1] < total + 20, f"{total} events took {cycles[1]} cycles"


def test_route_table_refuses_bad_writes():
    shape = ChipShape(cores=2, neurons=4, axons=6, lanes=1, route_entries=8)
    dut = Router(shape)
    cases = [
        (MemorySpace.ROUTE_POINTER, 8, route_pointer_bits(0, 1), MEM_REFUSED),     # past the table
        (MemorySpace.ROUTE_POINTER, 7, route_pointer_bits(6, 2) | 1 << 24, MEM_REFUSED),  # reserved bit
        (MemorySpace.ROUTE_POINTER, 7, route_pointer_bits(6, 2), MEM_OK),
        (MemorySpace.ROUTE_ENTRY, 8, route_entry_bits(core=0, axon=0), MEM_REFUSED),
        (MemorySpace.ROUTE_ENTRY, 0, route_entry_bits(core=2, axon=0), MEM_REFUSED),  # no core 2
        (MemorySpace.ROUTE_ENTRY, 0, route_entry_bits(core=1, axon=6), MEM_REFUSED),  # no axon 6
        (MemorySpace.ROUTE_ENTRY, 0, route_entry_bits(core=1, axon=5), MEM_OK),
        (MemorySpace.ROUTE_ENTRY, 1, route_entry_bits(host=True, core=3, axon=9), MEM_OK),
        (MemorySpace.ROUTE_ENTRY, 2, 1 << 31, MEM_REFUSED),                          # stray high bit
    ]
    results = []

    async def bench(ctx):
        for space, addr, data, _ in cases:
            results.append(await mem_access(ctx, dut, space, addr, data, write=True))
        for space, addr, want in [(MemorySpace.ROUTE_POINTER, 7, route_pointer_bits(6, 2)),
                                  (MemorySpace.ROUTE_ENTRY, 0, route_entry_bits(core=1, axon=5)),
                                  (MemorySpace.ROUTE_ENTRY, 1, route_entry_bits(host=True)),  # normalised
                                  (MemorySpace.ROUTE_ENTRY, 2, 0), (MemorySpace.ROUTE_ENTRY, 100, 0)]:
            resp = await mem_access(ctx, dut, space, addr)
            assert resp == want, f"{space.name}[{addr}] reads {resp:#x}, expected {want:#x}"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert results == [c[3] for c in cases]


def test_arbiter_round_robin():
    """Grants only requesters, in cyclic order after the last served; every requester of a random
    request pattern is served within `count` grants."""
    count = 5
    dut = RoundRobinArbiter(count)
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = random.Random(seed)

    async def bench(ctx):
        pending = [False] * count
        waited = [0] * count
        last = count - 1
        for _ in range(2000):
            for i in range(count):
                pending[i] = pending[i] or rng.random() < 0.4
            ctx.set(dut.requests, sum(1 << i for i in range(count) if pending[i]))
            advance = rng.random() < 0.7
            ctx.set(dut.advance, advance)
            await ctx.delay(1e-9)
            valid, grant = ctx.get(dut.valid), ctx.get(dut.grant)
            assert valid == any(pending)
            if valid:
                expected = next((last + k) % count for k in range(1, count + 1) if pending[(last + k) % count])
                assert grant == expected
                if advance:
                    pending[grant] = False
                    last = grant
                    for i in range(count):
                        waited[i] = waited[i] + 1 if pending[i] else 0
                    assert max(waited) < count
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_bad_parameters():
    with pytest.raises(ValueError, match="count = 0"):
        RoundRobinArbiter(0)
    with pytest.raises(ValueError, match="axon_fifo_depth = 1"):
        Router(SHAPE, axon_fifo_depth=1)
    with pytest.raises(ValueError, match="shape.cores = 0"):
        Router(SimpleNamespace(cores=0, neurons=4, axons=4, route_entries=4))


@pytest.mark.verilator
@pytest.mark.parametrize("ready_probability", [1.0, 0.5, 0.1])
def test_router_verilator_soak(ready_probability, tmp_path):
    """>= 10^4 random spikes per seed, two seeds, through the Verilated router (tests/tb_router.py)."""
    from neurofabric.sim import cocotb as sim_cocotb  # noqa: PLC0415

    run_cocotb = sim_cocotb.run_cocotb

    for seed in (random.randrange(1 << 30), random.randrange(1 << 30)):
        print(f"seed = {seed}")
        report_path = tmp_path / f"report_{seed}.json"
        start = time.monotonic()
        run_cocotb(Router(SHAPE, spike_fifo_depth=2, axon_fifo_depth=4, host_fifo_depth=4),
                   test_module="tb_router", test_dir=os.path.dirname(__file__), seed=seed,
                   extra_env={"NF_ROUTER_SEED": str(seed), "NF_READY": str(ready_probability),
                              "NF_SPIKES": "4000", "NF_SHAPE": "3,16,48,128", "NF_REPORT": str(report_path)})
        report = json.loads(report_path.read_text())
        print(f"{report} in {time.monotonic() - start:.1f} s")
        assert report["spikes"] == 12000 and report["events"] >= 10_000
        assert report["lost"] == report["duplicated"] == report["misrouted"] == report["reordered"] == 0


@pytest.mark.slow
@pytest.mark.verilator
def test_router_verilator_long_soak(tmp_path):
    """10^5 spikes per core, ready 0.3 on every output."""
    from neurofabric.sim import cocotb as sim_cocotb  # noqa: PLC0415

    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    report_path = tmp_path / "report.json"
    sim_cocotb.run_cocotb(Router(SHAPE, spike_fifo_depth=2, axon_fifo_depth=4, host_fifo_depth=4),
                          test_module="tb_router", test_dir=os.path.dirname(__file__), seed=seed,
                          extra_env={"NF_ROUTER_SEED": str(seed), "NF_READY": "0.3", "NF_SPIKES": "100000",
                                     "NF_SHAPE": "3,16,48,128", "NF_REPORT": str(report_path)})
    report = json.loads(report_path.read_text())
    assert report["events"] >= 300_000
    assert report["lost"] == report["duplicated"] == report["misrouted"] == report["reordered"] == 0
