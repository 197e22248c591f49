"""Benchmark of the neuron core (hdl/core.py): throughput in simulation, Fmax and resources.

    python bench/core.py [--json FILE] [--no-synth] [--lanes 1,2,4,8,16]

* ``sop_per_cycle``: synaptic operations per cycle measured in the Amaranth simulator on a
  full-row workload (K events back to back into a 256 x 256 core: every event adds a whole
  weight row); cycles counted from the first event offered to ``busy`` low. Also the cycles of
  one update sweep (``step`` pulse to idle) with every neuron firing and ``spike_out`` ready.
* ``ecp5_85f``: the reference core NeuronCore(256, 256, lanes=16) on LFE5U-85F (CABGA381) at a
  100 MHz target, through :func:`neurofabric.boards.synth.synthesize` (yosys synth_ecp5 -abc9,
  nextpnr-ecp5, routed): fmax_mhz, lut4, ff, bram (DP16KD), dsp (MULT18X18D); also
  ``ecp5_85f_lanes8`` for 8 lanes.
* ``up5k``: NeuronCore(256, 256, lanes=4) on iCE40 UP5K (SG48) at a 24 MHz target, weights in
  SPRAM: synth_ice40 -abc9 -dsp -spram and nextpnr-ice40 (same harness as ``synthesize``).

The counts include the synthesis harness (``harness_ff``, ``harness_lut4`` say how much).
Figures are measurements, not assertions: nothing here fails on a missed target.
"""

import argparse
import json
import sys
import time

from amaranth.sim import Simulator

from neurofabric.boards import synth
from neurofabric.hdl.core import NeuronCore
from neurofabric.hdl.protocol import PROFILE_COUNT, MemorySpace, ProfileField

NEURONS = AXONS = 256
#: ECP5 builds: the first is the reference (`ecp5_85f`: the largest sensible P, beyond which the
#: N-cycle update sweep, not integration, bounds a step); others are reported as ecp5_85f_lanesP.
ECP5_LANES = (16, 8)
#: UP5K: 4 lanes keep the weights in 2 SPRAMs and the accumulator banks in 12 of the 30 EBRs.
UP5K_LANES = 4


def measure(neurons, axons, lanes, events=16):
    """(integration cycles for `events` back-to-back full-row events, sweep cycles)."""
    dut = NeuronCore(neurons, axons, lanes)
    result = {}

    async def bench(ctx):
        # every neuron fires in the sweep: threshold 0 in every profile
        for p in range(PROFILE_COUNT):
            ctx.set(dut.mem.payload, {"addr": p * 8 + ProfileField.THRESHOLD.value, "data": 0,
                                      "mem": MemorySpace.PROFILE, "core": 0, "write": 1})
            ctx.set(dut.mem.valid, 1)
            ctx.set(dut.mem_resp.ready, 1)
            await ctx.tick().until(dut.mem.ready)
            ctx.set(dut.mem.valid, 0)
            await ctx.tick().until(dut.mem_resp.valid)
        ctx.set(dut.spike_out.ready, 1)
        cycles = 0
        sent = 0
        ctx.set(dut.axon_in.valid, 1)
        while True:
            ctx.set(dut.axon_in.payload, sent % axons)
            _, _, ready, busy = await ctx.tick().sample(dut.axon_in.ready, dut.busy)
            cycles += 1
            if sent < events and ready:
                sent += 1
                if sent == events:
                    ctx.set(dut.axon_in.valid, 0)
            elif sent == events and not busy:
                break
            if cycles > 10 * events * neurons + 100:
                raise RuntimeError("integration did not finish")
        result["integrate"] = cycles - 1       # the last cycle only saw busy low
        ctx.set(dut.step, 1)
        await ctx.tick()
        ctx.set(dut.step, 0)
        cycles = 1
        spikes = 0
        while True:
            _, _, busy, valid = await ctx.tick().sample(dut.busy, dut.spike_out.valid)
            spikes += valid
            cycles += 1
            if not busy:
                break
        assert spikes == neurons, f"{spikes} spikes, expected {neurons}"
        result["sweep"] = cycles - 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result["integrate"], result["sweep"]


def synthesize_up5k(component, *, clock_mhz, name, progress=None):
    """:func:`synth.synthesize` for iCE40 UP5K with DSP and SPRAM inference. Amaranth gives every
    memory an initial value (zeros), and SPRAM cannot be initialised: the weight memory's init
    is dropped so that yosys may map it to SPRAM (its contents are then undefined at power-up
    until the host writes the weights)."""
    return synth.synthesize(component, family="ice40", device="up5k", package="sg48", clock_mhz=clock_mhz,
                            name=name, progress=progress, synth_opts="-dsp -spram",
                            after_read="delete t:$meminit_v2 r:MEMID=\\weight_mem %i")


def synth_figures(result):
    figures = {"fmax_mhz": round(result.fmax_mhz, 2), "target_mhz": result.target_mhz,
               "lut4": result.lut4, "ff": result.ff, "bram": result.bram, "dsp": result.dsp,
               "carry": result.carry, "harness_ff": result.harness_ff,
               "harness_lut4": result.harness_lut4}
    if result.family == "ice40":
        figures["spram"] = result.spram
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--no-synth", action="store_true", help="skip synthesis (simulation only)")
    parser.add_argument("--lanes", default="1,2,4,8,16", help="lane counts to simulate")
    parser.add_argument("--events", type=int, default=16, help="full-row events per measurement")
    args = parser.parse_args(argv)

    figures = {"neurons": NEURONS, "axons": AXONS, "events": args.events, "lanes": {}}
    print(f"NeuronCore({NEURONS}, {AXONS}, P): {args.events} full-row events back to back, then one sweep")
    print(f"{'P':>3} {'cycles':>8} {'SOP':>8} {'SOP/cycle':>10} {'sweep cycles':>13}")
    for lanes in map(int, args.lanes.split(",")):
        integrate, sweep = measure(NEURONS, AXONS, lanes, args.events)
        sops = args.events * NEURONS
        figures["lanes"][lanes] = {"integrate_cycles": integrate, "sop": sops,
                                   "sop_per_cycle": round(sops / integrate, 3), "sweep_cycles": sweep}
        print(f"{lanes:>3} {integrate:>8} {sops:>8} {sops / integrate:>10.3f} {sweep:>13}")
    reference = figures["lanes"].get(ECP5_LANES[0]) or next(iter(figures["lanes"].values()))
    figures["sop_per_cycle"] = reference["sop_per_cycle"]

    if not args.no_synth:
        runs = []
        for i, lanes in enumerate(ECP5_LANES):
            key = "ecp5_85f" if i == 0 else f"ecp5_85f_lanes{lanes}"
            runs.append((key, lanes, lambda lanes=lanes: synth.synthesize(
                NeuronCore(NEURONS, AXONS, lanes), family="ecp5", device="LFE5U-85F",
                package="CABGA381", clock_mhz=100, name=f"core_{NEURONS}x{AXONS}_p{lanes}",
                progress=print)))
        runs.append(("up5k", UP5K_LANES, lambda: synthesize_up5k(
            NeuronCore(NEURONS, AXONS, UP5K_LANES), clock_mhz=24,
            name=f"core_{NEURONS}x{AXONS}_p{UP5K_LANES}_up5k", progress=print)))
        for key, lanes, run in runs:
            start = time.monotonic()
            result = run()
            figures[key] = {"lanes": lanes, **synth_figures(result)}
            if lanes in figures["lanes"]:
                figures[key]["sop_per_cycle"] = figures["lanes"][lanes]["sop_per_cycle"]
            line = ", ".join(f"{k} {v}" for k, v in figures[key].items())
            print(f"{key}: {line} ({time.monotonic() - start:.0f} s; logs in {result.report_path.parent})")

    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
