"""Benchmark of the AER router and the chip: throughput, errors, step time, Fmax and resources.

    python bench/router.py [--json FILE] [--no-synth] [--spikes N]

* ``router``: the Verilated router (3 cores x 16 neurons, 128 route entries, random route
  table with 0..4 entries per source, 20% to the host) fed N spikes per core back to back with
  every output always ready (and, for comparison, ready with probability 0.5):
  ``events_per_cycle`` = route entries delivered per cycle, and ``lost``, ``duplicated``,
  ``misrouted`` (arrived at a destination that expected none), ``reordered`` (per source and
  destination) over ``events`` sent (tests/tb_router.py does the counting against its
  reference model).
* ``chip``: the reference network of tests/tb_chip.py (3 NeuronCores of 16 neurons and 16
  axons, 4 lanes; feed-forward, recurrent, self-loop, multicast and host routes; random host
  input) run for 120 steps under Verilator and checked against ChipModel:
  ``cycles_per_step`` from the first ``run`` to the last STEP marker.
* ``ecp5_85f``: ``Chip(ChipShape(cores=4, neurons=256, axons=256, lanes=8, route_entries=1024))``
  on LFE5U-85F (CABGA381) at a 100 MHz target through
  :func:`neurofabric.boards.synth.synthesize`: fmax_mhz, lut4, ff, bram, dsp, carry (counts
  include the synthesis harness).

Figures are measurements, not assertions: the script fails only if a simulation finds an error.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from neurofabric.hdl.chip import Chip
from neurofabric.hdl.router import Router
from neurofabric.host.model import ChipShape

TESTS = Path(__file__).resolve().parent.parent / "tests"
ROUTER_SHAPE = ChipShape(cores=3, neurons=16, axons=48, lanes=1, route_entries=128)
CHIP_SHAPE = ChipShape(cores=3, neurons=16, axons=16, lanes=4, route_entries=256)
SYNTH_SHAPE = ChipShape(cores=4, neurons=256, axons=256, lanes=8, route_entries=1024)


def _cocotb():
    from neurofabric.sim import cocotb as sim_cocotb

    return sim_cocotb


def router_figures(spikes, ready, seed):
    sim_cocotb = _cocotb()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        shape = ROUTER_SHAPE
        sim_cocotb.run_cocotb(
            Router(shape, spike_fifo_depth=2, axon_fifo_depth=4, host_fifo_depth=4),
            test_module="tb_router", test_dir=TESTS, seed=seed,
            extra_env={"NF_ROUTER_SEED": str(seed), "NF_READY": str(ready), "NF_SPIKES": str(spikes),
                       "NF_SHAPE": f"{shape.cores},{shape.neurons},{shape.axons},{shape.route_entries}",
                       "NF_REPORT": str(report)})
        figures = json.loads(report.read_text())
    figures["events_per_cycle"] = round(figures["events"] / figures["cycles"], 4)
    return figures


def chip_figures(steps, seed):
    sim_cocotb = _cocotb()
    shape = CHIP_SHAPE
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        sim_cocotb.run_cocotb(
            Chip(shape, input_queue_depth=32), test_module="tb_chip", test_dir=TESTS, seed=seed,
            extra_env={"NF_SHAPE": f"{shape.cores},{shape.neurons},{shape.axons},{shape.lanes},{shape.route_entries}",
                       "NF_SEED": str(seed), "NF_STEPS": str(steps), "NF_READY": "1.0", "NF_QUEUE": "32",
                       "NF_REPORT": str(report)})
        figures = json.loads(report.read_text())
    figures["shape"] = vars(shape) if hasattr(shape, "__dict__") else str(shape)
    figures["cycles_per_step"] = round(figures["cycles_per_step"], 2)
    return figures


def synth_figures(clock_mhz=100):
    from neurofabric.boards import synth

    start = time.monotonic()
    result = synth.synthesize(Chip(SYNTH_SHAPE), family="ecp5", device="LFE5U-85F", package="CABGA381",
                              clock_mhz=clock_mhz, name="chip4")
    return {"shape": str(SYNTH_SHAPE), "target_mhz": clock_mhz, "fmax_mhz": round(result.fmax_mhz, 2),
            "lut4": result.lut4, "ff": result.ff, "bram": result.bram, "dsp": result.dsp,
            "carry": result.carry, "harness_ff": result.harness_ff, "harness_lut4": result.harness_lut4,
            "seconds": round(time.monotonic() - start, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--no-synth", action="store_true", help="skip the ECP5 synthesis")
    parser.add_argument("--spikes", type=int, default=4000, help="spikes per core in the router run")
    parser.add_argument("--steps", type=int, default=120, help="steps of the chip run")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    figures = {"seed": seed}
    figures["router"] = router_figures(args.spikes, 1.0, seed)
    figures["router_ready_0_5"] = router_figures(args.spikes, 0.5, seed)
    for key in ("events_per_cycle", "lost", "duplicated", "misrouted", "events"):
        figures[key] = figures["router"][key]
    figures["chip"] = chip_figures(args.steps, seed)
    figures["cycles_per_step"] = figures["chip"]["cycles_per_step"]
    if not args.no_synth:
        figures["ecp5_85f"] = synth_figures()
    text = json.dumps(figures, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
