"""Benchmark of the host link: sim device speed, host streaming rate, UART efficiency.

    python bench/link.py [--json FILE] [--steps N] [--events N] [--seconds S] [--no-synth]

* ``sim_cycles_per_s``: clock cycles per second of the Verilator sim device (``neurofabric.sim.
  device``, the default learning-capable chip, 2 cores x 64 neurons x 64 axons x 8 lanes) running
  the reference network: two 64-neuron LIF populations driving each other (10% random connectivity), biased
  so that they fire, no host routes, for ``--steps`` steps through ``Chip.run`` (the host drains
  the step markers as it runs): cycles simulated over the time the device spent clocking them
  (it prints both on exit; the rest of the time it waits for the host), and per second of its
  processor time (``cycles_per_cpu_s``: what the clocking rate is on a machine with no other load). Also ``steps_per_s``
  through the host API (the whole run's wall time: host, link and device), the same for the
  inference-only chip (``chip:inference``) and, clocking without a network (RUN 2**31 until
  the output stalls), the LoopbackChip.
* ``host_events_per_s``: input events streamed host -> sim device -> host through the
  LoopbackChip (each injected event comes back as a spike): rounds of INJECT (200 events,
  one step) + RUN 1 + READ_OUTPUT polls through ``LinkBackend`` over TCP, events returned
  per wall-clock second.
* ``uart_efficiency``: the UART path (``UartLinkedChip``, divisor 4) simulated in pysim,
  bit by bit, with a host that sends each frame as soon as the previous reply ended:
  payload bytes moved / (elapsed bit times / 10), for a full INJECT frame
  (``LINK_MAX_INJECT_EVENTS`` = 202 events, 1010 payload bytes, reply empty) and a READ_OUTPUT
  frame returning those 202 events (808 bytes). From
  it, ``uart_3mbaud_*_events_per_s`` = efficiency x 300 000 bytes/s / bytes per event.

* ``link_ice40_up5k``, ``link_ecp5_85f`` (unless ``--no-synth``): ``UartLinkedChip`` with the
  LoopbackChip (divisor 8) through yosys + nextpnr (``neurofabric.boards.synth.synthesize``):
  fmax and resources of the host link + UART (the loopback chip adds a 512-word memory and
  two 16-entry FIFOs; the harness's shift registers are counted too).

Figures are measurements, not assertions.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from neurofabric.hdl.protocol import LINK_INPUT_EVENT_BYTES, LINK_MAX_INJECT_EVENTS, LinkCommand, LinkStatus
from neurofabric.host.chip import Chip
from neurofabric.host.link import LinkBackend, build_frame, inject_request, parse_body, run_request
from neurofabric.host.model import ChipShape
from neurofabric.host.network import LIF, Network
from neurofabric.host.transport import SerialTransport
from neurofabric.sim.device import SimDevice, build_device

LOOPBACK_SHAPE = ChipShape(cores=2, neurons=64, axons=256, lanes=8, route_entries=64)
CHIP_SHAPE = ChipShape(cores=2, neurons=64, axons=64, lanes=8, route_entries=256, encoder_channels=64)  # the reference figures


def reference_network(seed):
    """The network `sim_cycles_per_s` runs: two 64-neuron LIF populations (one per core) driving
    each other with 10% random connectivity (each core's 64 axons take one 64-neuron source)."""
    rng = np.random.default_rng(seed)
    size = CHIP_SHAPE.neurons
    net = Network()
    a, b = (net.population(size, LIF(threshold=4000, tau_mem=8.0), bias=600) for _ in range(2))
    for pre, post in ((a, b), (b, a)):
        net.connect(pre, post, np.where(rng.random((size, size)) < 0.1, rng.integers(-200, 300, (size, size)), 0))
    return net


def sim_cycles_per_s(chip, steps, seed):
    """(cycles/s, figures) of the sim device with `chip` running the reference network."""
    executable = build_device(CHIP_SHAPE, chip=chip)
    with SimDevice(CHIP_SHAPE, executable=executable) as device:
        with Chip(LinkBackend(SerialTransport(device.url), timeout=10.0)) as board:
            board.load(reference_network(seed), record=[])
            start = time.monotonic()
            board.run(steps=steps, record=[])
            elapsed = time.monotonic() - start
            counters = board.stats()
        device.process.wait(10)
    cycles, clocking = device.cycles(), device.clocking_seconds()
    return cycles / clocking, {"cycles_per_s": cycles / clocking, "cycles": cycles, "clocking_seconds": clocking,
                               "cycles_per_cpu_s": cycles / device.cpu_seconds(), "steps": steps, "steps_per_s": steps / elapsed, "run_seconds": elapsed,
                               "cycles_per_step": cycles / steps, "counters": counters,
                               "shape": CHIP_SHAPE.__dict__, "chip": chip}


def loopback_cycles_per_s(seconds):
    """Clock rate of the sim device with the LoopbackChip, clocking without pause."""
    executable = build_device(LOOPBACK_SHAPE, chip="loopback")
    with SimDevice(LOOPBACK_SHAPE, executable=executable) as device:
        backend = LinkBackend(SerialTransport(device.url), timeout=5.0)
        backend.command(*run_request((1 << 31) - 1))
        time.sleep(seconds)
        backend.close()
        device.process.wait(10)
    cycles, clocking = device.cycles(), device.clocking_seconds()
    return cycles / clocking, {"cycles_per_s": cycles / clocking, "cycles": cycles, "clocking_seconds": clocking,
                               "cycles_per_cpu_s": cycles / device.cpu_seconds()}


def host_events_per_s(events, seed):
    executable = build_device(LOOPBACK_SHAPE, chip="loopback:256")
    rng = np.random.default_rng(seed)
    with SimDevice(LOOPBACK_SHAPE, executable=executable) as device:
        backend = LinkBackend(SerialTransport(device.url), timeout=5.0)
        per_round = 200
        returned = 0
        start = time.monotonic()
        step = 0
        while returned < events:
            batch = np.stack([np.full(per_round, step), rng.integers(0, 2, per_round),
                              np.sort(rng.integers(0, LOOPBACK_SHAPE.axons, per_round))], axis=1)
            batch = batch[np.lexsort((batch[:, 2], batch[:, 1]))]
            backend.inject(batch)
            spikes = backend.run(1)
            if len(spikes) != per_round:
                raise RuntimeError(f"expected {per_round} spikes back, got {len(spikes)}")
            returned += len(spikes)
            step += 1
        elapsed = time.monotonic() - start
        stats = dict(backend.stats)
        backend.close()
    return returned / elapsed, stats


def uart_efficiency(divisor=4):
    from amaranth.sim import Simulator

    from neurofabric.hdl.top import UartLinkedChip
    from neurofabric.host.link import FrameReader
    from neurofabric.sim.device import loopback_factory

    shape = LOOPBACK_SHAPE
    dut = UartLinkedChip(shape, divisor=divisor, chip_factory=lambda s: loopback_factory(s, 256))
    events = LINK_MAX_INJECT_EVENTS                  # a full INJECT frame; all come back as spikes
    inject_events = [[0, 0, i] for i in range(events)]
    frames = [
        ("inject", build_frame(1, *inject_request(inject_events)), events * LINK_INPUT_EVENT_BYTES),
        ("run", build_frame(2, *run_request(1)), 4),
        ("read_output", build_frame(3, LinkCommand.READ_OUTPUT, events.to_bytes(2, "little")), 2),
    ]
    results = {}

    async def send_byte(ctx, byte):
        for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
            ctx.set(dut.uart_rx, level)
            await ctx.tick().repeat(divisor)

    async def host(ctx):
        await ctx.tick().repeat(10)
        for name, frame, request_payload in frames:
            start = 0
            cycles = 0
            for byte in frame:
                await send_byte(ctx, byte)
                cycles += 10 * divisor
            start = cycles
            reader = FrameReader()
            bodies = []
            while not bodies:
                count = 0
                while ctx.get(dut.uart_tx):
                    await ctx.tick()
                    count += 1
                cycles += count
                value = 0
                await ctx.tick().repeat(divisor // 2)
                for i in range(8):
                    await ctx.tick().repeat(divisor)
                    value |= ctx.get(dut.uart_tx) << i
                await ctx.tick().repeat(divisor + divisor // 2)
                cycles += 10 * divisor
                bodies = reader.feed(bytes([value]))
            reply = parse_body(bodies[0])
            assert reply is not None and reply.status == LinkStatus.ACK, (name, reply)
            payload = request_payload + len(reply.payload)
            results[name] = {"payload_bytes": payload, "cycles": cycles, "request_cycles": start,
                             "efficiency": payload / (cycles / (10 * divisor))}

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    return results


def synth_figures():
    from neurofabric.boards.synth import synthesize
    from neurofabric.hdl.top import UartLinkedChip
    from neurofabric.sim.device import loopback_factory

    figures = {}
    for key, family, device, package, mhz in (("link_ice40_up5k", "ice40", "up5k", "sg48", 24),
                                              ("link_ecp5_85f", "ecp5", "LFE5U-85F", "CABGA381", 100)):
        shape = ChipShape(cores=1, neurons=256, axons=256, lanes=8, route_entries=1024)
        result = synthesize(UartLinkedChip(shape, divisor=8, chip_factory=loopback_factory),
                            family=family, device=device, package=package, clock_mhz=mhz, name=key)
        figures[key] = {name: getattr(result, name) for name in (
            "fmax_mhz", "target_mhz", "lut4", "ff", "bram", "spram", "dsp", "carry", "harness_ff", "harness_lut4")}
        print(f"{key}: {figures[key]}", file=sys.stderr)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--steps", type=int, default=20_000, help="steps of the reference network")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-synth", action="store_true", help="skip the yosys + nextpnr runs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    figures = {"seed": seed}

    for chip, key in (("chip", "sim_cycles_per_s_chip"), ("chip:inference", "sim_cycles_per_s_inference")):
        rate, entry = sim_cycles_per_s(chip, args.steps, seed)
        figures[key] = entry
        print(f"sim device ({chip}, {CHIP_SHAPE}): {rate / 1e6:.2f} M cycles/s "
              f"({entry['cycles_per_cpu_s'] / 1e6:.2f} M per CPU second), "
              f"{entry['steps_per_s']:.0f} steps/s through the host API, {entry['cycles_per_step']:.0f} cycles/step, "
              f"{entry['counters']}", file=sys.stderr)
    figures["sim_cycles_per_s"] = figures["sim_cycles_per_s_chip"]["cycles_per_s"]
    rate, figures["sim_cycles_per_s_loopback"] = loopback_cycles_per_s(args.seconds)
    print(f"sim device (LoopbackChip, no network): {rate / 1e6:.2f} M cycles/s", file=sys.stderr)

    rate, stats = host_events_per_s(args.events, seed)
    figures["host_events_per_s"] = rate
    figures["host_stream"] = stats
    print(f"host -> sim device -> host: {rate:,.0f} events/s ({stats})", file=sys.stderr)

    uart = uart_efficiency()
    figures["uart"] = uart
    figures["uart_efficiency"] = uart["inject"]["efficiency"]
    figures["uart_3mbaud_inject_events_per_s"] = uart["inject"]["efficiency"] * 300_000 / 5
    figures["uart_3mbaud_output_events_per_s"] = uart["read_output"]["efficiency"] * 300_000 / 4
    for name, entry in uart.items():
        print(f"UART {name}: efficiency {entry['efficiency']:.3f} ({entry['payload_bytes']} payload bytes, "
              f"{entry['cycles']} cycles at divisor 4)", file=sys.stderr)

    if not args.no_synth:
        figures.update(synth_figures())

    text = json.dumps(figures, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
