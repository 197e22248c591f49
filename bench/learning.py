"""Benchmark of on-chip learning (NeuronCore(learning=True), hdl/core.py, docs/learning_hw.md).

    python bench/learning.py [--json FILE] [--no-synth] [--png docs/stdp_window.png] [--quick]

``--quick`` (the test suite runs it): a 32 x 32 core with 4 lanes for the throughput, no
synthesis, no PNG unless asked, and the learning demo's small random-initialisation
configuration (:data:`~neurofabric.demos.learning.RANDOM_QUICK`) for one seed.

* ``weight_updates_per_cycle``: synapses visited (read, updated, written back) per cycle of the
  learning phase, measured in the Amaranth simulator on NeuronCore(256, 256, 8): every axon
  plastic, `rows` axons with an event, every neuron firing. The learning-phase cycles are the
  cycles from ``step`` to idle minus those of the same step with learning off (the sweep).
  Also per part: depression only (no neuron fires) and potentiation only (no event).
* ``window_max_abs_error``: the STDP window (a single pre/post pair at dt = -20..+20 steps) on
  the simulated core against the documented rule, :func:`neurofabric.host.model.stdp_window`
  (``A * trace(|dt|) / 2**shift`` with the trace decayed by the chip's integer decay,
  docs/semantics.md "The STDP window"), in weight LSBs: stochastic rounding keeps every pair
  within 1 LSB of it. ``window_max_abs_error_exponential``: the same points against the
  continuous ``A exp(-|dt| / tau)``, which the integer trace undershoots by up to
  ``1 / (1 - alpha)`` trace units. The curve is saved as a PNG (default docs/stdp_window.png).
* ``learning_overhead``: NeuronCore(256, 256, 8, learning=True) minus learning=False on ECP5
  LFE5U-85F (CABGA381) at 100 MHz through :func:`neurofabric.boards.synth.synthesize`: lut4,
  ff, bram, dsp differences, and both builds' fmax.

* ``stdp_accuracy_random_init``: the learning demo from uniform random initial weights
  (``demos/learning.py`` :data:`~neurofabric.demos.learning.RANDOM`: 100 neurons, the core's
  hard winner-take-all, normalisation and rest on the chip) trained on the model on the 1257
  training digits and tested on the 540, for every seed of ``--seeds`` (default 0 1 2): the
  minimum over the seeds (``_mean`` the mean, ``seeds`` every run). ``learning_off_accuracy``:
  the same network and initial weights with ``a_plus = a_minus = 0``; ``stdp_gain``: the
  smallest per-seed difference. The runs go through :func:`neurofabric.host.sweep.sweep` (Dask;
  ``--scheduler ADDRESS`` for a cluster, else a one-worker LocalCluster), each recorded with its
  parameters in ``--runs FILE`` (JSON lines) if given. ``--no-stdp`` skips them.

Figures are measurements, not assertions.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from amaranth.sim import Simulator

from neurofabric.hdl.core import NeuronCore
from neurofabric.hdl.protocol import PROFILE_COUNT, CoreRegister, MemorySpace, ProfileField
from neurofabric.host.model import stdp_window

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_learning import WINDOW, measure_window, plot_window, window_expected  # noqa: E402

NEURONS = AXONS = 256
LANES = 8


def learning_cycles(neurons, axons, lanes, rows, fire):
    """Cycles from `step` to idle with learning on and off, for `rows` axons with an event and
    every neuron firing (`fire`) or none; every axon plastic."""
    dut = NeuronCore(neurons, axons, lanes, learning=True)
    cycles = {}

    async def request(ctx, space, addr, value):
        ctx.set(dut.mem.payload, {"addr": addr, "data": value, "mem": space, "core": 0, "write": 1})
        ctx.set(dut.mem.valid, 1)
        await ctx.tick().until(dut.mem.ready)
        ctx.set(dut.mem.valid, 0)
        await ctx.tick().until(dut.mem_resp.valid)

    async def bench(ctx):
        ctx.set(dut.mem_resp.ready, 1)
        ctx.set(dut.spike_out.ready, 1)
        ctx.set(dut.reward, 1)
        for p in range(PROFILE_COUNT):
            await request(ctx, MemorySpace.PROFILE, p * 8 + ProfileField.THRESHOLD.value, 0 if fire else 1 << 20)
        for a in range(axons):
            await request(ctx, MemorySpace.PLASTIC, a, 1)
        await request(ctx, MemorySpace.CORE, CoreRegister.LEARNING.value, 1)
        for learn in (0, 1):
            ctx.set(dut.learn, learn)
            for a in range(rows):
                ctx.set(dut.axon_in.payload, a)
                ctx.set(dut.axon_in.valid, 1)
                await ctx.tick().until(dut.axon_in.ready)
            ctx.set(dut.axon_in.valid, 0)
            await ctx.tick().until(~dut.busy)
            ctx.set(dut.step, 1)
            await ctx.tick()
            ctx.set(dut.step, 0)
            count = 1
            while ctx.get(dut.busy):
                await ctx.tick()
                count += 1
            cycles[learn] = count

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return cycles


def throughput(rows=16, neurons=NEURONS, axons=AXONS, lanes=LANES):
    result = {}
    for name, rows_, fire in (("all", rows, True), ("depression", rows, False), ("potentiation", 0, True)):
        cycles = learning_cycles(neurons, axons, lanes, rows_, fire)
        visited = rows_ * neurons + (neurons * axons if fire else 0)
        extra = cycles[1] - cycles[0]
        result[name] = {"rows": rows_, "firing": neurons if fire else 0, "synapses": visited,
                        "step_cycles_learning_off": cycles[0], "step_cycles_learning_on": cycles[1],
                        "learning_cycles": extra, "weight_updates_per_cycle": round(visited / extra, 3)}
        print(f"  {name}: {visited} synapses in {extra} extra cycles "
              f"({visited / extra:.3f} per cycle; step {cycles[0]} -> {cycles[1]} cycles)", flush=True)
    return result


def window(png):
    results = measure_window(WINDOW)
    errors = {dt: abs(hw - stdp_window(WINDOW, dt)) for dt, (hw, _) in results.items()}
    exponential = {dt: abs(hw - window_expected(WINDOW, dt)) for dt, (hw, _) in results.items()}
    mismatches = [dt for dt, (hw, model) in results.items() if hw != model]
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_window(results, WINDOW, png)
    print(f"  window: max |hw - rule| = {max(errors.values()):.2f} LSB (against A exp(-|dt|/tau): "
          f"{max(exponential.values()):.2f}), {len(mismatches)} differences from the model"
          + (f"; saved {png}" if png is not None else ""), flush=True)
    return {"window_max_abs_error": round(max(errors.values()), 3),
            "window_max_abs_error_exponential": round(max(exponential.values()), 3),
            "window_rule": {dt: stdp_window(WINDOW, dt) for dt in sorted(results)},
            "window_points": {dt: hw for dt, (hw, _) in sorted(results.items())},
            "window_model_mismatches": mismatches,
            "window_config": {k: getattr(WINDOW, k) for k in WINDOW.__dataclass_fields__}}


def overhead():
    from neurofabric.boards import synth
    builds = {}
    for learning in (False, True):
        name = f"core_{NEURONS}x{AXONS}_p{LANES}_{'learning' if learning else 'inference'}"
        start = time.monotonic()
        result = synth.synthesize(NeuronCore(NEURONS, AXONS, LANES, learning=learning), family="ecp5",
                                  device="LFE5U-85F", package="CABGA381", clock_mhz=100, name=name,
                                  progress=lambda stage: print(f"  {stage}", flush=True))
        builds[learning] = result
        print(f"  {name}: {result.fmax_mhz:.1f} MHz, {result.lut4} LUT4, {result.ff} FF, {result.bram} BRAM, "
              f"{result.dsp} DSP ({time.monotonic() - start:.0f} s)", flush=True)
    off, on = builds[False], builds[True]
    return {
        "lut4": on.lut4 - off.lut4, "ff": on.ff - off.ff, "bram": on.bram - off.bram, "dsp": on.dsp - off.dsp,
        "fmax_mhz_learning": round(on.fmax_mhz, 1), "fmax_mhz_inference": round(off.fmax_mhz, 1),
        "learning": {k: getattr(on, k) for k in ("lut4", "ff", "bram", "dsp", "carry")},
        "inference": {k: getattr(off, k) for k in ("lut4", "ff", "bram", "dsp", "carry")},
        "harness_lut4": on.harness_lut4, "harness_ff": on.harness_ff,
    }


def stdp_random_init(seeds, quick=False, scheduler=None, runs=None):
    """The learning demo from random weights, learning on and off, for every seed (a sweep)."""
    from neurofabric.demos.learning import sweep_run
    from neurofabric.host.sweep import grid, sweep
    config = "random_quick" if quick else "random"
    records = sweep(sweep_run, grid(config=[config], learning=[True, False]), seeds=seeds, scheduler=scheduler,
                    record=runs, progress=False)
    failed = [r for r in records if r["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} learning runs failed; the first: {failed[0]['error']}")
    on = {r["seed"]: r["result"] for r in records if r["params"]["learning"]}
    off = {r["seed"]: r["result"] for r in records if not r["params"]["learning"]}
    gains = [on[s]["accuracy"] - off[s]["accuracy"] for s in seeds]
    accuracies = [on[s]["accuracy"] for s in seeds]
    for s in seeds:
        print(f"  seed {s}: accuracy {on[s]['accuracy']:.3f}, learning off {off[s]['accuracy']:.3f}", flush=True)
    return {"stdp_accuracy_random_init": min(accuracies),
            "stdp_accuracy_random_init_mean": sum(accuracies) / len(accuracies),
            "learning_off_accuracy": max(off[s]["accuracy"] for s in seeds),
            "learning_off_accuracy_mean": sum(off[s]["accuracy"] for s in seeds) / len(seeds),
            "stdp_gain": min(gains), "stdp_gain_mean": sum(gains) / len(gains),
            "stdp_config": config,
            "seeds": {s: {"learning": on[s], "learning_off": off[s]} for s in seeds}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--no-synth", action="store_true", help="skip the ECP5 builds")
    parser.add_argument("--png", type=Path, default=None, help="where to save the window plot "
                        "(default docs/stdp_window.png; none with --quick)")
    parser.add_argument("--quick", action="store_true", help="small core, no synthesis, a small learning run")
    parser.add_argument("--no-stdp", action="store_true", help="skip the learning runs from random weights")
    parser.add_argument("--stdp-only", action="store_true", help="only the learning runs from random weights")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="learning seeds (default 0 1 2)")
    parser.add_argument("--scheduler", help="a Dask scheduler address for the learning runs")
    parser.add_argument("--runs", type=Path, help="append every learning run (JSON lines) to this file")
    args = parser.parse_args(argv)
    png = args.png if args.png is not None or args.quick else ROOT / "docs" / "stdp_window.png"
    core = (32, 32, 4) if args.quick else (NEURONS, AXONS, LANES)
    figures = {"core": list(core), "quick": args.quick}
    if not args.stdp_only:
        print("throughput (Amaranth simulator):", flush=True)
        figures["throughput"] = throughput(4, *core) if args.quick else throughput()
        figures["weight_updates_per_cycle"] = figures["throughput"]["all"]["weight_updates_per_cycle"]
        print("STDP window:", flush=True)
        figures.update(window(png))
    if not args.no_stdp:
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        print(f"learning from random weights (model, seeds {seeds}):", flush=True)
        figures.update(stdp_random_init(seeds, args.quick, args.scheduler, args.runs))
    if not args.no_synth and not args.quick and not args.stdp_only:
        print("synthesis (ECP5-85F, 100 MHz):", flush=True)
        figures["learning_overhead"] = overhead()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
