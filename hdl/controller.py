"""The time-step controller: input queue, step sequencing and the end-of-step barrier.

One time step ``t`` (design.md section 4, ``ChipModel.step``):

1. DELIVER: pop the input-queue events tagged ``t`` and hand them to the cores' axons; events
   tagged with a past step (or naming a core/axon that does not exist) are dropped and counted
   (``late`` pulse); an event tagged with a future step stays at the head of the queue.
2. SETTLE: wait until the chip is idle (every input accepted and integrated).
3. UPDATE: pulse ``update`` for one cycle: every core updates its neurons; their spikes flow
   through the router, to axons (integrated for step ``t + 1``) and to the host.
4. BARRIER: after a guard of :data:`GUARD_CYCLES` cycles, wait until ``idle`` (every core idle,
   router and all FIFOs empty) is seen.
5. MARKER: offer a STEP event (``index = t & 0xFFFF``) on ``marker``; once taken, ``step``
   becomes ``t + 1`` and the next step starts if more were requested through ``run``.

Step tags are the low 16 bits of the step number: an event tagged ``tag`` at step ``t`` is
for now if ``tag == t mod 2**16``, for the future if ``(tag - t) mod 2**16 < 2**15``, else late.
"""

from amaranth.hdl import Assert, Module, Mux, Signal
from amaranth.lib import data, fifo, stream
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.protocol import Event, EventKind, InputEvent

__all__ = ["StepController", "GUARD_CYCLES"]

#: Cycles after the update pulse before the barrier looks at ``idle`` (cores raise ``busy``
#: within one cycle of the pulse; the extra cycle is margin).
GUARD_CYCLES = 2


class StepController(CheckedComponent):
    """Sequences time steps for a chip of `cores` cores of `axons` axons.

    Ports: ``inject`` (host input events, nondecreasing step tags, queued in a FIFO of
    `queue_depth`), ``run`` (add this many steps to the steps left; saturates at 2**32 - 1),
    ``deliver`` (input events for the current step, to the cores' axons), ``update`` (1-cycle
    pulse), ``idle`` (the barrier condition, from the chip), ``marker`` (STEP events),
    ``step`` (the step number: the next to run, or the one running), ``running``,
    1-cycle counter pulses ``delivered``, ``late`` and ``step_done``; ``hold`` keeps the
    controller from starting the next step, and ``resting`` says it is between steps (so
    memory accesses that need idle cores can go ahead); ``starting`` pulses as a step begins.

    Cycle behaviour: one input event per cycle during DELIVER; the fixed overhead per step is
    about ``GUARD_CYCLES + 4`` cycles plus the time the cores and the router need.

    The queue stores an event in as few bits as the chip needs: the step tag, the axon and
    core indices in the widths of `axons` and `cores`, and whether the event names a core and
    axon that exist (checked as it is queued; one that does not is dropped at its step).
    """

    @classmethod
    def check_parameters(cls, *, cores, axons, queue_depth=64):
        if not isinstance(queue_depth, int) or not 2 <= queue_depth <= 65536:
            raise ValueError(f"queue_depth = {queue_depth!r} is out of range: allowed integers 2..65536")

    def __init__(self, *, cores, axons, queue_depth=64):
        self.cores = cores
        self.axons = axons
        self.queue_depth = queue_depth
        super().__init__({
            "inject": In(stream.Signature(InputEvent)),
            "run": In(stream.Signature(32)),
            "deliver": Out(stream.Signature(InputEvent)),
            "update": Out(1),
            "idle": In(1),
            "marker": Out(stream.Signature(Event)),
            "step": Out(32),
            "running": Out(1),
            "delivered": Out(1),
            "late": Out(1),
            "step_done": Out(1),
            "queue_empty": Out(1),
            "input_free": Out(17),
            "hold": In(1),
            "resting": Out(1),
            "starting": Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        queued = data.StructLayout({"step": 16, "exists": 1, "axon": range(self.axons),
                                    "core": range(self.cores)})
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=queued.size, depth=self.queue_depth)
        incoming = self.inject.payload
        entry = Signal(queued)      # indices truncated to their widths once `exists` is known
        m.d.comb += [
            entry.step.eq(incoming.step),
            entry.exists.eq((incoming.core < self.cores) & (incoming.axon < self.axons)),
            entry.axon.eq(incoming.axon),
            entry.core.eq(incoming.core),
            queue.w_data.eq(entry),
            queue.w_en.eq(self.inject.valid),
            self.inject.ready.eq(queue.w_rdy),
        ]
        head_queued = queued(queue.r_data)
        head = Signal(InputEvent)
        m.d.comb += [head.step.eq(head_queued.step), head.axon.eq(head_queued.axon),
                     head.core.eq(head_queued.core)]
        m.d.comb += [self.queue_empty.eq(queue.level == 0), self.input_free.eq(self.queue_depth - queue.level)]

        remaining = Signal(32)
        finishing = Signal()            # this cycle's marker is taken: one step fewer
        m.d.comb += self.run.ready.eq(1)
        # remaining' = sat32(remaining - finishing + run): both sums come from registers, and the
        # late handshakes (`finishing`, `run.valid`) only select among them (remaining >= 1
        # whenever a marker is taken)
        fewer = Signal(32)
        m.d.comb += fewer.eq(remaining - 1)

        def plus_run(value):
            total = Signal(33)
            m.d.comb += total.eq(value + self.run.payload)
            return Mux(total[32], (1 << 32) - 1, total[:32])
        with m.If(self.run.valid):
            m.d.sync += remaining.eq(Mux(finishing, plus_run(fewer), plus_run(remaining)))
        with m.Elif(finishing):
            m.d.sync += remaining.eq(fewer)

        tag_distance = Signal(16)
        m.d.comb += tag_distance.eq(head.step - self.step[:16])
        now = tag_distance == 0
        past = tag_distance[15]
        exists = head_queued.exists

        guard = Signal(range(GUARD_CYCLES + 1))
        m.d.comb += [
            self.deliver.payload.eq(head),
            self.marker.payload.kind.eq(EventKind.STEP),
            self.marker.payload.index.eq(self.step[:16]),
        ]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [self.running.eq(remaining != 0), self.resting.eq(1)]
                with m.If((remaining != 0) & ~self.hold):
                    m.d.comb += self.starting.eq(1)
                    m.next = "DELIVER"
            with m.State("DELIVER"):
                m.d.comb += self.running.eq(1)
                with m.If(queue.r_rdy & (past | (now & ~exists))):
                    m.d.comb += [queue.r_en.eq(1), self.late.eq(1)]
                with m.Elif(queue.r_rdy & now):
                    m.d.comb += [
                        self.deliver.valid.eq(1),
                        queue.r_en.eq(self.deliver.ready),
                        self.delivered.eq(self.deliver.ready),
                    ]
                with m.Else():
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                m.d.comb += self.running.eq(1)
                with m.If(self.idle):
                    m.next = "UPDATE"
            with m.State("UPDATE"):
                m.d.comb += [self.running.eq(1), self.update.eq(1)]
                m.d.sync += guard.eq(GUARD_CYCLES)
                m.next = "BARRIER"
            with m.State("BARRIER"):
                m.d.comb += self.running.eq(1)
                with m.If(guard != 0):
                    m.d.sync += guard.eq(guard - 1)
                with m.Elif(self.idle):
                    m.next = "MARKER"
            with m.State("MARKER"):
                m.d.comb += [self.running.eq(1), self.marker.valid.eq(1)]
                with m.If(self.marker.ready):
                    m.d.comb += [finishing.eq(1), self.step_done.eq(1)]
                    m.d.sync += self.step.eq(self.step + 1)
                    m.next = "IDLE"
        # the state register only ever holds one of the six states (checked by formal and sims)
        m.d.comb += Assert(fsm.state < 6)
        return m
