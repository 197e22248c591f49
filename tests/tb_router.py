"""cocotb bench for the Verilated router (launched by tests/test_router.py).

Parameters come from the environment: NF_SHAPE = "cores,neurons,axons,route_entries",
NF_ROUTER_SEED, NF_READY (ready probability of every output), NF_SPIKES (spikes per core,
offered back to back: bursts far longer than any FIFO). The bench loads a random route table
through ``mem``, reads it back, sends the spikes and checks every output stream against the
reference: per (source core, destination) the exact ordered sequence (axon numbers name the
source core), so lost = duplicated = misrouted = reordered = 0 and fan-out = route count.
"""

import json
import os
import random
from collections import Counter

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from neurofabric.hdl.protocol import MemorySpace
from neurofabric.sim.cocotb_bench import mem_request, mem_transfer

ROUTE_POINTER, ROUTE_ENTRY = MemorySpace.ROUTE_POINTER, MemorySpace.ROUTE_ENTRY
SPIKE_KIND = 1


def pointer_bits(base, count):
    return base | count << 16


def entry_bits(host=False, core=0, axon=0):
    return axon | core << 16 | int(host) << 30





def random_routes(cores, neurons, axons, route_entries, rng):
    span = axons // cores
    routes, used = {}, 0
    for core in range(cores):
        for neuron in range(neurons):
            entries = []
            for _ in range(rng.randint(0, 4)):
                if rng.random() < 0.2:
                    entries.append(("host",))
                else:
                    entries.append(("axon", rng.randrange(cores), core * span + rng.randrange(span)))
            entries = entries[:route_entries - used]
            used += len(entries)
            routes[(core, neuron)] = entries
    return routes


async def mem_access(dut, space, addr, data=0, write=False, budget=100):
    return await mem_transfer(dut, mem_request(space, addr, data, write), budget=budget)


@cocotb.test()
async def router_soak(dut):
    cores, neurons, axons, route_entries = map(int, os.environ["NF_SHAPE"].split(","))
    seed = int(os.environ["NF_ROUTER_SEED"])
    ready_probability = float(os.environ["NF_READY"])
    spikes_per_core = int(os.environ["NF_SPIKES"])
    rng = random.Random(seed)
    dut._log.info(f"seed {seed}, ready probability {ready_probability}")
    span = axons // cores

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for c in range(cores):
        getattr(dut, f"spikes__{c}__valid").value = 0
        getattr(dut, f"axons__{c}__ready").value = 0
    dut.host__ready.value = 0
    dut.mem__valid.value = 0
    dut.mem_resp__ready.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    routes = random_routes(cores, neurons, axons, route_entries, rng)
    sources = list(routes)
    rng.shuffle(sources)
    writes, base = [], 0
    for core, neuron in sources:
        entries = routes[(core, neuron)]
        writes.append((ROUTE_POINTER, core * neurons + neuron, pointer_bits(base, len(entries))))
        for i, e in enumerate(entries):
            writes.append((ROUTE_ENTRY, base + i,
                           entry_bits(host=True) if e[0] == "host" else entry_bits(core=e[1], axon=e[2])))
        base += len(entries)
    for space, addr, data in writes:
        assert await mem_access(dut, space, addr, data, write=True) == 0, f"write {space}[{addr}] refused"
    for space, addr, data in writes:
        got = await mem_access(dut, space, addr)
        assert got == data, f"read back {space}[{addr}] = {got:#x}, wrote {data:#x}"

    spikes = [[rng.randrange(neurons) for _ in range(spikes_per_core)] for _ in range(cores)]
    want_axon, want_host = {}, {}
    for core, neuron_list in enumerate(spikes):
        for neuron in neuron_list:
            for e in routes[(core, neuron)]:
                if e[0] == "host":
                    want_host.setdefault(core, []).append(neuron)
                else:
                    want_axon.setdefault((e[1], core), []).append(e[2])
    total = sum(map(len, want_axon.values())) + sum(map(len, want_host.values()))

    spike_valid = [getattr(dut, f"spikes__{c}__valid") for c in range(cores)]
    spike_payload = [getattr(dut, f"spikes__{c}__payload") for c in range(cores)]
    spike_ready = [getattr(dut, f"spikes__{c}__ready") for c in range(cores)]
    axon_valid = [getattr(dut, f"axons__{c}__valid") for c in range(cores)]
    axon_payload = [getattr(dut, f"axons__{c}__payload") for c in range(cores)]
    axon_ready = [getattr(dut, f"axons__{c}__ready") for c in range(cores)]
    host_valid, host_payload, host_ready = dut.host__valid, dut.host__payload, dut.host__ready
    sent = [0] * cores
    got_axon, got_host = {}, {}
    received = 0
    ready_rng = random.Random(seed ^ 0x5A5A)
    budget = 1000 + int(total / max(ready_probability, 0.05) * 4) + 4 * cores * spikes_per_core
    falling, read_only = FallingEdge(dut.clk), ReadOnly()
    for cycle in range(budget):  # noqa: B007 (reported below)
        await falling
        for c in range(cores):
            if sent[c] < spikes_per_core:
                spike_valid[c].value = 1
                spike_payload[c].value = spikes[c][sent[c]]
            else:
                spike_valid[c].value = 0
        readies = [ready_probability >= 1.0 or ready_rng.random() < ready_probability for _ in range(cores + 1)]
        for c in range(cores):
            axon_ready[c].value = int(readies[c])
        host_ready.value = int(readies[cores])
        await read_only
        for c in range(cores):
            if sent[c] < spikes_per_core and spike_ready[c].value:
                sent[c] += 1
            if readies[c] and axon_valid[c].value:
                axon = int(axon_payload[c].value)
                got_axon.setdefault((c, axon // span), []).append(axon)
                received += 1
        if readies[cores] and host_valid.value:
            event = int(host_payload.value)
            assert event >> 30 == SPIKE_KIND, f"host event {event:#x} is not a SPIKE"
            got_host.setdefault((event >> 16) & 0xFF, []).append(event & 0xFFFF)
            received += 1
        if received == total and all(s == spikes_per_core for s in sent):
            break
    else:
        raise AssertionError(f"only {received} of {total} events within {budget} cycles")
    dut._log.info(f"{total} events from {cores * spikes_per_core} spikes in {cycle + 1} cycles")
    # a while longer: nothing more may appear, and the router must go idle
    await FallingEdge(dut.clk)
    for c in range(cores):
        getattr(dut, f"spikes__{c}__valid").value = 0
        getattr(dut, f"axons__{c}__ready").value = 1
    dut.host__ready.value = 1
    for _ in range(50):
        await ReadOnly()
        assert not any(int(getattr(dut, f"axons__{c}__valid").value) for c in range(cores)), "extra axon event"
        assert not int(dut.host__valid.value), "extra host event"
        await FallingEdge(dut.clk)
    assert not int(dut.busy.value), "router still busy after draining"
    report = score(want_axon, got_axon, want_host, got_host)
    report.update(events=total, spikes=cores * spikes_per_core, cycles=cycle + 1, ready=ready_probability)
    dut._log.info(f"report {report}")
    if os.environ.get("NF_REPORT"):
        with open(os.environ["NF_REPORT"], "w") as f:
            json.dump(report, f)
    for key in set(want_axon) | set(got_axon):
        assert got_axon.get(key, []) == want_axon.get(key, []), \
            f"axon events from core {key[1]} to core {key[0]}: lost, duplicated, misrouted or reordered"
    for key in set(want_host) | set(got_host):
        assert got_host.get(key, []) == want_host.get(key, []), f"host events from core {key} differ"
    assert report["lost"] == report["duplicated"] == report["misrouted"] == report["reordered"] == 0


def score(want_axon, got_axon, want_host, got_host):
    """Lost, duplicated, misrouted (arrived where none was expected) and reordered sequences."""
    lost = duplicated = misrouted = reordered = 0
    for want, got in ((want_axon, got_axon), (want_host, got_host)):
        for key in set(want) | set(got):
            w, g = Counter(want.get(key, [])), Counter(got.get(key, []))
            for item in set(w) | set(g):
                if g[item] < w[item]:
                    lost += w[item] - g[item]
                elif g[item] > w[item]:
                    if w[item]:
                        duplicated += g[item] - w[item]
                    else:
                        misrouted += g[item]
            if w == g and want.get(key, []) != got.get(key, []):
                reordered += 1
    return {"lost": lost, "duplicated": duplicated, "misrouted": misrouted, "reordered": reordered}
