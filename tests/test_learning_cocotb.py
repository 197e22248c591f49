"""NeuronCore(learning=True)'s generated Verilog under Verilator + cocotb, against the model.

One build of a learning core with 3 words per row and an odd axon count; the cocotb module
tests/tb_learning.py runs random STDP configurations (and an extreme one) with spike_out ready
probability 1.0, 0.5 and 0.1, comparing spikes, weights, traces and neuron state after every step.
"""

import os
import random
import time

import pytest

from neurofabric.hdl.core import NeuronCore

CORE = (12, 7, 4)      # neurons, axons, lanes: 3 words per row


@pytest.mark.verilator
def test_learning_verilator_against_model():
    from neurofabric.sim import cocotb as sim_cocotb  # noqa: PLC0415 (needs the sim extra)

    seed = int(os.environ.get("NEUROFABRIC_SEED", random.randrange(1 << 30)))
    print(f"NeuronCore{CORE} learning=True: NEUROFABRIC_SEED={seed}")
    start = time.monotonic()
    sim_cocotb.run_cocotb(NeuronCore(*CORE, learning=True), test_module="tb_learning",
                          test_dir=os.path.dirname(__file__), seed=seed,
                          extra_env={"NF_CORE": ",".join(map(str, CORE)), "NF_CORE_SEED": str(seed),
                                     "NF_STEPS": "10"})
    print(f"took {time.monotonic() - start:.1f} s")
