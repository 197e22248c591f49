"""NeuronCore's generated Verilog under Verilator + cocotb, against the bit-exact model.

One build of a core whose rows are 3 words long (so the accumulator forwarding paths are in the
Verilog) and whose neuron count is not a power of two; the cocotb module tests/tb_core.py runs
random configurations with spike_out ready probability 1.0, 0.5 and 0.1, and an extreme one.
"""

import os
import random
import time

import pytest

from neurofabric.hdl.core import NeuronCore

CORE = (48, 20, 16)      # neurons, axons, lanes: 3 words per row


@pytest.mark.verilator
def test_core_verilator_against_model():
    from neurofabric.sim import cocotb as sim_cocotb  # noqa: PLC0415 (needs the sim extra)

    seed = int(os.environ.get("NEUROFABRIC_SEED", random.randrange(1 << 30)))
    print(f"NeuronCore{CORE}: NEUROFABRIC_SEED={seed}")
    start = time.monotonic()
    sim_cocotb.run_cocotb(NeuronCore(*CORE), test_module="tb_core", test_dir=os.path.dirname(__file__),
                          seed=seed, extra_env={"NF_CORE": ",".join(map(str, CORE)), "NF_CORE_SEED": str(seed),
                                                "NF_STEPS": "16"})
    print(f"took {time.monotonic() - start:.1f} s")
