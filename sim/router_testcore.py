"""A small integrate-and-fire core with the neuron core's ports, for testing the router and chip.

:class:`IntegrateFireCore` has exactly the ports of ``neurofabric.hdl.core.NeuronCore`` (its :class:`~neurofabric.hdl.core.CoreSignature`) and
computes what ``ChipModel`` computes for a core configured with fixed weights, a bias per
neuron and one profile ``NeuronProfile(du=4096, dv=0, threshold=T)`` (reset to 0, no
refractory period, no adaptation, no learning)::

    u = sat24(acc << weight_exp);  v = sat24(v + u + bias);  fire when v >= T, then v = 0

It keeps every neuron in registers and updates them all in the cycle of the ``step`` pulse,
so it is only for small test networks. Its weights are build-time constants; it answers every
``mem`` request with 0 (one response per request).

Cycle behaviour: ``axon_in`` is always ready (one event per cycle, integrated into the next
update, also while spikes are being sent); ``spike_out`` offers the fired neurons in ascending
order, one per cycle while ready, from the cycle after the ``step`` pulse; ``busy`` is high
while fired neurons remain to be sent. An optional LFSR-driven ``stall`` pattern withholds
``spike_out.valid`` on some cycles to exercise the chip's timing.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.core import CoreSignature
from neurofabric.hdl.protocol import ACC_BITS, STATE_BITS, signed_range

__all__ = ["IntegrateFireCore"]


def _saturate(m, value, bits, name):
    lo, hi = signed_range(bits)
    result = Signal(signed(bits), name=name)
    m.d.comb += result.eq(Mux(value > hi, hi, Mux(value < lo, lo, value)))
    return result


class IntegrateFireCore(CheckedComponent):
    """See the module docstring. `weights[a][n]` (int8), `bias[n]`, `threshold`, `weight_exp`."""

    @classmethod
    def check_parameters(cls, neurons, axons, lanes, *, weights, bias, threshold, weight_exp=0, stall_seed=0):
        if len(weights) != axons or any(len(row) != neurons for row in weights):
            raise ValueError(f"weights must be {axons} x {neurons}")
        if len(bias) != neurons:
            raise ValueError(f"bias must have {neurons} entries, has {len(bias)}")

    def __init__(self, neurons, axons, lanes, *, weights, bias, threshold, weight_exp=0, stall_seed=0):
        self.neurons, self.axons, self.lanes = neurons, axons, lanes
        self.weights = [list(map(int, row)) for row in weights]
        self.bias = list(map(int, bias))
        self.threshold = int(threshold)
        self.weight_exp = int(weight_exp)
        self.stall_seed = stall_seed
        super().__init__(CoreSignature(neurons, axons))

    def elaborate(self, platform):
        m = Module()
        n_count = self.neurons
        acc = [Signal(signed(ACC_BITS), name=f"acc_{n}") for n in range(n_count)]
        v = [Signal(signed(STATE_BITS), name=f"v_{n}") for n in range(n_count)]
        pending = Signal(n_count)

        # --- integrate -----------------------------------------------------------------------
        event = self.axon_in.valid
        m.d.comb += self.axon_in.ready.eq(1)
        for n in range(n_count):
            column = Array(Const(self.weights[a][n], signed(8)) for a in range(self.axons))
            weight = Mux(event, column[self.axon_in.payload], 0)
            summed = _saturate(m, acc[n] + weight, ACC_BITS, f"acc_next_{n}")
            with m.If(self.step):
                m.d.sync += acc[n].eq(weight)        # this cycle's event is for the next update
            with m.Else():
                m.d.sync += acc[n].eq(summed)

            # --- update (in the step cycle) ---------------------------------------------------
            u = _saturate(m, acc[n] << self.weight_exp, STATE_BITS, f"u_{n}")
            v_new = _saturate(m, v[n] + u + self.bias[n], STATE_BITS, f"v_new_{n}")
            fired = v_new >= self.threshold
            with m.If(self.step):
                m.d.sync += [v[n].eq(Mux(fired, 0, v_new)), pending[n].eq(fired)]

        # --- send the fired neurons, ascending -------------------------------------------------
        lowest = Signal(range(max(n_count, 2)))
        for n in reversed(range(n_count)):
            with m.If(pending[n]):
                m.d.comb += lowest.eq(n)
        stall = Signal()
        if self.stall_seed:
            lfsr = Signal(16, init=self.stall_seed & 0xFFFF or 1)
            m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
            m.d.comb += stall.eq(lfsr[:2] == 0)
        m.d.comb += [
            self.spike_out.valid.eq((pending != 0) & ~stall),
            self.spike_out.payload.eq(lowest),
            self.busy.eq(pending != 0),
        ]
        with m.If(self.spike_out.valid & self.spike_out.ready & ~self.step):
            m.d.sync += pending.eq(pending & ~(Const(1, n_count) << lowest)[:n_count])

        # --- memory port: one response (0) per request ------------------------------------------
        answered = Signal()
        m.d.comb += [
            self.mem.ready.eq(~answered),
            self.mem_resp.valid.eq(answered),
            self.mem_resp.payload.eq(0),
        ]
        with m.If(self.mem.valid & self.mem.ready):
            m.d.sync += answered.eq(1)
        with m.If(self.mem_resp.valid & self.mem_resp.ready):
            m.d.sync += answered.eq(0)
        return m
