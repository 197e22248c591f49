"""Formal checks (SymbiYosys + yices, bmc + prove + cover) of the router and the step barrier.

Every input of every harness is free (``AnySeq`` via ``neurofabric.sim.formal.free``), limited
only by the stream rules where a property depends on them; every ``Cover`` must be reached, so
no proof is vacuous.

- arbiter: grants only requesters; a requester that keeps requesting is served within
  ``count - 1`` grants to others (no starvation).
- router: FIFOs never overflow or lose data; events are conserved stage by stage (accepted
  spikes - spikes taken = spike FIFO occupancy; entries dispatched - events delivered = output
  FIFO occupancy); ``busy`` low means nothing is inside. (Fan-out = route count is checked
  against the reference model in simulation, tests/test_router.py.)
- chip barrier: with cores that behave arbitrarily within the core contract, while the STEP
  marker is offered no core is busy and the router is empty (no event of the step in flight),
  and no SPIKE leaves after the marker of its step.
"""

import pytest
from amaranth.hdl import Assert, Assume, Cat, Cover, Elaboratable, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.chip import Chip
from neurofabric.hdl.protocol import EventKind, MemRequest, RouteKind
from neurofabric.hdl.router import RoundRobinArbiter, Router
from neurofabric.host.model import ChipShape
from neurofabric.sim import formal as formal_module

pytestmark = pytest.mark.formal


def _formal():
    return formal_module


class ArbiterHarness(Elaboratable):
    def __init__(self, count):
        self.count = count

    def elaborate(self, platform):
        formal = _formal()
        m = Module()
        count = self.count
        m.submodules.dut = dut = RoundRobinArbiter(count)
        requests = Signal(count)
        m.d.comb += [
            requests.eq(formal.free(count)),
            dut.requests.eq(requests),
            dut.advance.eq(formal.free(1)),
        ]
        served = dut.advance & dut.valid
        # a request stays up until it is served (stream rule)
        previous = Signal(count)
        previous_served = Signal(count)
        m.d.sync += [
            previous.eq(requests),
            previous_served.eq(Cat((served & (dut.grant == i)) for i in range(count))),
        ]
        for i in range(count):
            with m.If(previous[i] & ~previous_served[i]):
                m.d.comb += Assume(requests[i])
        m.d.comb += Assert(dut.valid == requests.any())
        m.d.comb += Assert(dut._last < count)
        with m.If(dut.valid):
            m.d.comb += Assert(requests.bit_select(dut.grant, 1))
        # no starvation: grants to others while requester i waits stay below count
        for i in range(count):
            waited = Signal(range(count + 1), name=f"waited_{i}")
            with m.If(served & requests[i] & (dut.grant != i)):
                m.d.sync += waited.eq(waited + 1)
            with m.Elif(served & (dut.grant == i)):
                m.d.sync += waited.eq(0)
            m.d.comb += Assert(waited <= count - 1)
            # inductive strengthening: every grant to another moves `last` towards i
            between = Signal(range(count), name=f"between_{i}")   # requesters strictly after last, before i
            m.d.comb += between.eq((i - dut._last - 1 + count) % count)
            m.d.comb += Assert(waited + between <= count - 1)
            with m.If(~requests[i]):
                m.d.comb += Assert(waited == 0)
            m.d.comb += Cover(waited == count - 1)
            m.d.comb += Cover(served & (dut.grant == i) & requests.all())
        return m


class RouterHarness(Elaboratable):
    """A 2-core router with a preset route table whose counts are 0..3 (wrapping the table)."""

    SHAPE = ChipShape(cores=2, neurons=2, axons=2, lanes=1, route_entries=3)
    POINTERS = [{"base": 0, "count": 2}, {"base": 2, "count": 3}, {"base": 1, "count": 0}, {"base": 1, "count": 1}]
    ENTRIES = [{"kind": RouteKind.AXON, "core": 1, "axon": 1}, {"kind": RouteKind.HOST},
               {"kind": RouteKind.AXON, "core": 0, "axon": 0}]

    def elaborate(self, platform):
        formal = _formal()
        m = Module()
        shape = self.SHAPE
        m.submodules.dut = dut = Router(shape, spike_fifo_depth=2, axon_fifo_depth=2, host_fifo_depth=2,
                                        pointer_init=self.POINTERS, entry_init=self.ENTRIES)
        # route-table requests are free; the table is fixed for the fan-out property below
        m.d.comb += [
            dut.mem.valid.eq(formal.free(1)),
            dut.mem.payload.eq(formal.free(MemRequest.as_shape().size)),
            dut.mem_resp.ready.eq(formal.free(1)),
        ]
        with m.If(dut.mem.valid):
            m.d.comb += Assume(~dut.mem.payload.write)
        width = 4
        accepted = Signal(width)
        taken = Signal(width)
        for c in range(shape.cores):
            m.d.comb += [
                dut.spikes[c].valid.eq(formal.free(1)),
                dut.spikes[c].payload.eq(formal.free(1)),
                dut.axons[c].ready.eq(formal.free(1)),
            ]
        m.d.comb += dut.host.ready.eq(formal.free(1))
        transfers = [dut.spikes[c].valid & dut.spikes[c].ready for c in range(shape.cores)]
        m.d.sync += accepted.eq(accepted + sum(transfers))
        with m.If(dut.spike_taken):
            m.d.sync += taken.eq(taken + 1)
        spike_fifos = dut._spike_fifos
        level = sum(f.level for f in spike_fifos)
        # input stage conservation: in - out = occupancy; FIFOs never exceed their depth
        m.d.comb += Assert(((accepted - taken)[:width]) == level)
        for f in spike_fifos + list(dut._axon_fifos) + [dut._host_fifo]:
            m.d.comb += Assert(f.level <= f.depth)
        # output conservation per FIFO: dispatched - delivered = occupancy
        for c in range(shape.cores):
            sent, delivered = Signal(width, name=f"sent_{c}"), Signal(width, name=f"delivered_{c}")
            f = dut._axon_fifos[c]
            with m.If(f.w_en & f.w_rdy):
                m.d.sync += sent.eq(sent + 1)
            with m.If(dut.axons[c].valid & dut.axons[c].ready):
                m.d.sync += delivered.eq(delivered + 1)
            m.d.comb += Assert((sent - delivered)[:width] == f.level)
            m.d.comb += Cover(delivered == 2)
        # the expander walks at most the 8-bit count of a pointer
        x_remaining = dut._x_remaining
        m.d.comb += Assert(x_remaining <= 255)
        # busy low means empty
        with m.If(~dut.busy):
            m.d.comb += Assert((level == 0) & (x_remaining == 0) & ~dut._e_valid & ~dut._p_valid)
        m.d.comb += [
            Cover(dut.host.valid & dut.host.ready & (dut.host.payload.core == 1)),
            Cover((accepted == 4) & ~dut.busy),
        ]
        return m


class FreeCore(wiring.Component):
    """A core obeying the NeuronCore contract and otherwise arbitrary: accepts axon events
    whenever it likes (independently of its output), integrates for any time, spikes only in
    the sweep that a `step` pulse starts, holds each offered spike until taken, `busy` while
    anything is pending."""

    def __init__(self, neurons, axons):
        super().__init__({
            "axon_in": In(stream.Signature(range(axons))),
            "spike_out": Out(stream.Signature(range(neurons))),
            "step": In(1),
            "busy": Out(1),
            "mem": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(32)),
        })
        self.neurons = neurons

    def elaborate(self, platform):
        formal = _formal()
        m = Module()
        integrating, sweeping, offered = Signal(), Signal(), Signal()
        payload = Signal(range(self.neurons))
        m.d.comb += self.axon_in.ready.eq(formal.free(1))
        with m.If(self.axon_in.valid & self.axon_in.ready):
            m.d.sync += integrating.eq(1)
        with m.Elif(formal.free(1)):
            m.d.sync += integrating.eq(0)
        with m.If(self.step):
            m.d.comb += Assert(~sweeping & ~offered)
            m.d.sync += sweeping.eq(1)
        with m.Elif(sweeping & ~offered & formal.free(1)):
            m.d.sync += sweeping.eq(0)
        with m.If(offered):
            with m.If(self.spike_out.ready):
                m.d.sync += offered.eq(0)
        with m.Elif(sweeping & formal.free(1)):
            m.d.sync += [offered.eq(1), payload.eq(formal.free(len(payload)))]
        m.d.comb += [
            self.spike_out.valid.eq(offered),
            self.spike_out.payload.eq(payload),
            self.busy.eq(integrating | sweeping | offered),
        ]
        answered = Signal()
        m.d.comb += [self.mem.ready.eq(~answered), self.mem_resp.valid.eq(answered)]
        with m.If(self.mem.valid & self.mem.ready):
            m.d.sync += answered.eq(1)
        with m.If(self.mem_resp.valid & self.mem_resp.ready):
            m.d.sync += answered.eq(0)
        return m


class BarrierHarness(Elaboratable):
    SHAPE = ChipShape(cores=2, neurons=2, axons=2, lanes=1, route_entries=2)

    def elaborate(self, platform):
        formal = _formal()
        m = Module()
        shape = self.SHAPE
        pointers = [{"base": 0, "count": 2}, {"base": 1, "count": 1}, {"base": 0, "count": 1}, {"base": 1, "count": 1}]
        entries = [{"kind": RouteKind.AXON, "core": 1, "axon": 1}, {"kind": RouteKind.HOST}]
        m.submodules.dut = dut = Chip(shape, core_factory=lambda i: FreeCore(shape.neurons, shape.axons),
                                      input_queue_depth=2, spike_fifo_depth=2, axon_fifo_depth=2,
                                      host_fifo_depth=2, route_init=(pointers, entries))
        m.d.comb += [
            dut.mem.valid.eq(formal.free(1)),
            dut.mem.payload.eq(formal.free(MemRequest.as_shape().size)),
            dut.mem_resp.ready.eq(formal.free(1)),
            dut.inject.valid.eq(formal.free(1)),
            dut.inject.payload.eq(formal.free(40)),
            dut.run.valid.eq(formal.free(1)),
            dut.run.payload.eq(formal.free(32)),
            dut.out.ready.eq(formal.free(1)),
        ]
        with m.If(dut.mem.valid):
            m.d.comb += Assume(~dut.mem.payload.write)
        controller, router = dut.controller, dut.router
        cores_busy = Cat(core.busy for core in dut.cores).any()
        marker_offered = controller.marker.valid
        inputs_in_flight = controller.deliver.valid | dut._deliver_slice.o_stream.valid
        with m.If(marker_offered):
            m.d.comb += [
                Assert(~cores_busy & ~router.busy & ~inputs_in_flight),
                Assert(dut.out.valid & (dut.out.payload.kind == EventKind.STEP)),
            ]
        # between steps nothing is in flight either
        with m.If(controller.resting):
            m.d.comb += Assert(~cores_busy & ~router.busy & ~inputs_in_flight)
        # a SPIKE leaves only while the step that produced it is still running
        spike_out = dut.out.valid & dut.out.ready & (dut.out.payload.kind == EventKind.SPIKE)
        with m.If(spike_out):
            m.d.comb += Assert(controller.running)
        spikes_seen = Signal()
        with m.If(spike_out):
            m.d.sync += spikes_seen.eq(1)
        m.d.comb += [
            Cover(marker_offered & dut.out.ready & spikes_seen),
            Cover(controller.late),
        ]
        return m


def test_arbiter_formal():
    formal = _formal()
    formal.check(ArbiterHarness(3), name="router_arbiter", depths={"bmc": 16, "prove": 8, "cover": 12})


def test_router_formal():
    formal = _formal()
    formal.check(RouterHarness(), name="router_conservation", depths={"bmc": 12, "prove": 8, "cover": 14})


def test_chip_barrier_formal():
    formal = _formal()
    formal.check(BarrierHarness(), name="chip_barrier", depths={"bmc": 24, "prove": 12, "cover": 30})
