"""A stand-in chip for exercising the host link: the real chip's ports, trivial behaviour.

:class:`LoopbackChip` has exactly the ports of ``neurofabric.hdl.chip.Chip`` and behaves
simply enough that a test can predict everything it does:

- ``mem``: a word memory of ``ADDRESSES`` words per (space, core); an address at or above
  ``ADDRESSES`` reads 0 and ignores writes; a read of ``MemorySpace.CHIP`` address
  ``ChipRegister.STEP`` returns ``step``. Every request gets exactly one response on
  ``mem_resp`` one cycle after it is accepted (the read data, or 0 for a write).
- ``inject``/``run``/``out``: injected events wait in a FIFO of ``input_queue_depth``
  (``input_free`` says how many more fit); ``run`` is
  always ready and adds to the steps left to run; each step run
  emits, for every queued event tagged with that step (low 16 bits), a SPIKE event naming its
  core and axon (as the neuron), then a STEP marker (``index`` = step low 16 bits). Events
  tagged with an earlier step are dropped. Output events pass through a FIFO of
  ``input_queue_depth``; a full FIFO stalls the chip (``running`` stays high). ``step`` counts
  completed steps.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.protocol import ChipRegister, Event, EventKind, InputEvent, MemorySpace, MemRequest

__all__ = ["LoopbackChip"]


class LoopbackChip(wiring.Component):
    """A memory plus an inject-to-output loopback, with the chip's ports (see module doc)."""

    ADDRESSES = 16
    SPACES = 16

    def __init__(self, shape, *, input_queue_depth=16):
        self.shape = shape
        self.input_queue_depth = input_queue_depth
        super().__init__({
            "mem": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(32)),
            "inject": In(stream.Signature(InputEvent)),
            "run": In(stream.Signature(32)),
            "out": Out(stream.Signature(Event)),
            "step": Out(32),
            "running": Out(1),
            "input_free": Out(17),
        })

    @classmethod
    def depth(cls, shape):
        return cls.SPACES * (1 << max(1, (shape.cores - 1).bit_length())) * cls.ADDRESSES

    def elaborate(self, platform):
        m = Module()
        core_bits = max(1, (self.shape.cores - 1).bit_length())
        m.submodules.words = words = Memory(shape=32, depth=self.depth(self.shape), init=[])
        write = words.write_port()
        read = words.read_port(transparent_for=(write,))

        request = self.mem.payload
        in_range = request.addr < self.ADDRESSES
        index = Cat(request.addr[:4], request.core[:core_bits], request.mem.as_value())
        pending = Signal()
        pending_write = Signal()
        pending_zero = Signal()
        pending_step = Signal()
        m.d.comb += [
            self.mem.ready.eq(~pending | self.mem_resp.ready),
            read.addr.eq(index),
            read.en.eq(self.mem.ready),
            write.addr.eq(index),
            write.data.eq(request.data),
            write.en.eq(self.mem.valid & self.mem.ready & request.write & in_range),
            self.mem_resp.valid.eq(pending),
            self.mem_resp.payload.eq(Mux(pending_write | pending_zero, 0,
                                         Mux(pending_step, self.step, read.data))),
        ]
        with m.If(self.mem.ready):
            m.d.sync += [pending.eq(self.mem.valid), pending_write.eq(request.write),
                         pending_zero.eq(~in_range),
                         pending_step.eq((request.mem == MemorySpace.CHIP) &
                                         (request.addr == ChipRegister.STEP.value))]

        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=len(self.inject.payload.as_value()),
                                                           depth=self.input_queue_depth)
        m.d.comb += [
            queue.w_data.eq(self.inject.payload.as_value()),
            queue.w_en.eq(self.inject.valid),
            self.inject.ready.eq(queue.w_rdy),
            self.input_free.eq(self.input_queue_depth - queue.level),
        ]
        head = InputEvent(queue.r_data)

        m.submodules.output = output = fifo.SyncFIFOBuffered(width=32, depth=self.input_queue_depth)
        out_event = Event(output.w_data)
        m.d.comb += [
            self.out.payload.eq(output.r_data),
            self.out.valid.eq(output.r_rdy),
            output.r_en.eq(self.out.ready),
        ]

        remaining = Signal(32)
        step_done = Signal()
        m.d.comb += [self.running.eq(remaining != 0), self.run.ready.eq(1)]
        m.d.sync += remaining.eq(remaining + (self.run.payload & self.run.valid.replicate(32)) - step_done)
        step_low = self.step[:16]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(remaining != 0):
                    m.next = "STEP"
            with m.State("STEP"):
                # Late events (tagged before this step, modulo 2**16 within half the range) drop.
                late = (head.step - step_low)[15]
                with m.If(queue.r_rdy & late):
                    m.d.comb += queue.r_en.eq(1)
                with m.Elif(queue.r_rdy & (head.step == step_low)):
                    m.d.comb += [
                        output.w_en.eq(1),
                        out_event.kind.eq(EventKind.SPIKE),
                        out_event.core.eq(head.core),
                        out_event.index.eq(head.axon),
                        queue.r_en.eq(output.w_rdy),
                    ]
                with m.Else():
                    m.d.comb += [
                        output.w_en.eq(1),
                        out_event.kind.eq(EventKind.STEP),
                        out_event.index.eq(step_low),
                    ]
                    with m.If(output.w_rdy):
                        m.d.comb += step_done.eq(1)
                        m.d.sync += self.step.eq(self.step + 1)
                        m.next = "IDLE"
        return m
