"""The chip with real neuron cores under Verilator (cocotb bench tests/tb_chip.py).

A 3-core network (feed-forward, recurrent, self-loop, multicast and host routes, host input)
runs >= 100 steps; every step's host spikes, the counters and the final neuron state must equal
ChipModel's. The smaller Amaranth-simulator version is tests/test_chip.py.
"""

import json
import random
import time
from pathlib import Path

import pytest

from neurofabric.hdl.chip import Chip
from neurofabric.host.model import ChipShape

SHAPE = ChipShape(cores=3, neurons=16, axons=16, lanes=4, route_entries=256)


def run_chip_bench(shape, *, seed, steps, ready_probability, queue_depth=32, report=None):
    from neurofabric.sim import cocotb as sim_cocotb  # noqa: PLC0415

    env = {"NF_SHAPE": f"{shape.cores},{shape.neurons},{shape.axons},{shape.lanes},{shape.route_entries}",
           "NF_SEED": str(seed), "NF_STEPS": str(steps), "NF_READY": str(ready_probability),
           "NF_QUEUE": str(queue_depth)}
    if report is not None:
        env["NF_REPORT"] = str(report)
    sim_cocotb.run_cocotb(Chip(shape, input_queue_depth=queue_depth), test_module="tb_chip",
                          testcase="chip_network_against_model", test_dir=Path(__file__).parent, seed=seed,
                          extra_env=env)


@pytest.mark.verilator
@pytest.mark.parametrize("ready_probability", [1.0, 0.3])
def test_chip_network_verilator(ready_probability, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    start = time.monotonic()
    report = tmp_path / "report.json"
    run_chip_bench(SHAPE, seed=seed, steps=120, ready_probability=ready_probability, report=report)
    figures = json.loads(report.read_text())
    print(f"{figures} in {time.monotonic() - start:.1f} s")
    assert figures["steps"] == 120


@pytest.mark.slow
@pytest.mark.verilator
def test_chip_network_verilator_long(tmp_path):
    """A 4-core network for 1000 steps with out ready half the time."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    shape = ChipShape(cores=4, neurons=16, axons=16, lanes=4, route_entries=512)
    report = tmp_path / "report.json"
    run_chip_bench(shape, seed=seed, steps=1000, ready_probability=0.5, report=report)
    assert json.loads(report.read_text())["steps"] == 1000
