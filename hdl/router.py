"""The AER spike router: fans each core's spikes out through the route table.

Every neuron that fires leaves its core as one event on that core's ``spike_out`` stream. The
router looks the source neuron up in the route table (a :class:`RoutePointer` per source neuron,
naming a contiguous run of :class:`RouteEntry` words) and emits one event per entry: to an axon
of a core (for that core's next update) or to the host (a SPIKE event naming the source).

Datapath (docs/router.md)::

    spikes[c] -> spike FIFO[c] -> round-robin arbiter -> pointer read -> slice -> entry expander
              -> entry read -> slice -> dispatch -> axon FIFO[core] -> axons[core]
                                                -> host FIFO       -> host

Every stage is valid/ready with back-pressure; nothing is ever dropped. Writes to the route table
are range-checked on the way in (a write naming a core, axon or entry that does not exist is
refused), so every entry the pipeline reads names a real destination.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.core_memory import MemorySignature
from neurofabric.hdl.pipeline import SkidBuffer
from neurofabric.hdl.protocol import (
    Event,
    EventKind,
    MemorySpace,
    RouteEntry,
    RouteKind,
    RoutePointer,
)

__all__ = [
    "RoundRobinArbiter", "Router", "MEM_OK", "MEM_REFUSED",
    "event_bits", "route_pointer_bits", "route_entry_bits",
]

#: Response word of an accepted write.
MEM_OK = 0
#: Response word of a refused write (a field out of range, or an address past the memory).
MEM_REFUSED = 1


class RoundRobinArbiter(CheckedComponent):
    """Round-robin arbiter over `count` requesters.

    ``grant`` names the first requester after the last one served (cyclically), and is valid
    whenever ``valid`` (some request) is high; it is combinational. Pulse ``advance`` in a cycle
    in which the granted requester is served: the search then starts after it. A requester that
    keeps requesting is granted after at most ``count - 1`` other grants (no starvation).
    Requests must stay up until served (stream rules).
    """

    @classmethod
    def check_parameters(cls, count):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count = {count!r} is out of range: allowed integers >= 1")

    def __init__(self, count):
        self.count = count
        super().__init__({
            "requests": In(count),
            "grant": Out(range(count)),
            "valid": Out(1),
            "advance": In(1),
        })
        #: the last requester served; the first search starts at requester 0
        self._last = Signal(range(count), init=count - 1)

    def elaborate(self, platform):
        m = Module()
        count = self.count
        last = self._last
        m.d.comb += self.valid.eq(self.requests.any())
        if count == 1:
            return m
        with m.Switch(last):
            for previous in range(count):
                with m.Case(previous):
                    order = [(previous + offset) % count for offset in range(1, count + 1)]
                    # the highest-priority request wins: assign in reverse priority order
                    for candidate in reversed(order):
                        with m.If(self.requests[candidate]):
                            m.d.comb += self.grant.eq(candidate)
        with m.If(self.advance & self.valid):
            m.d.sync += last.eq(self.grant)
        return m


class Router(CheckedComponent):
    """The chip's AER router for a :class:`~neurofabric.host.model.ChipShape`.

    Ports:

    - ``spikes[c]``: the neurons core ``c`` fired (its ``spike_out``).
    - ``axons[c]``: axon events for core ``c`` (its ``axon_in``).
    - ``host``: SPIKE events for the host (``core``/``index`` name the source neuron).
    - ``mem``/``mem_resp``: the route table, ``MemorySpace.ROUTE_POINTER`` (addr = core *
      neurons + neuron) and ``ROUTE_ENTRY`` (addr = entry index); one response per request,
      one cycle after acceptance at the earliest (two for reads). Routing and host reads share
      each memory's read port: an accepted read waits for a cycle in which the routing stage
      could read, and the routing stage skips that cycle. Reads return the stored bits (0 past
      the end);
      writes answer :data:`MEM_OK`, or :data:`MEM_REFUSED` without writing when the address is
      past the memory, a reserved bit is set, or an axon entry names a core, axon or chip that
      does not exist (as ``ChipModel.write_words`` refuses them). A host entry is stored as
      plain ``kind = HOST`` (its other fields read back as 0). A pointer's entries are
      ``(base + i) mod route_entries``, as in ``ChipModel.routes_of``.
    - ``busy``: an event is somewhere inside (FIFOs or pipeline). Low for one cycle means the
      router is empty; it rises the cycle after a spike is accepted.
    - ``spike_taken``, ``axon_sent``, ``host_sent``: 1-cycle pulses for the chip's counters
      (a spike entered the pipeline; an entry went to an axon FIFO; an entry went to the host FIFO).

    `pointer_init`/`entry_init` (lists of RoutePointer/RouteEntry values, or dicts) preset the
    route table (for formal harnesses and fixed builds); by default it is empty (all counts 0).

    Throughput: one route entry per cycle, and one source spike per cycle while each has at most
    one entry (spikes without entries take one cycle and no expander slot); latency from
    ``spikes`` to ``axons`` is about 9 cycles when nothing is stalled (two buffered FIFOs,
    pointer read, register slice, expander, entry read, register slice). The register slices
    (:class:`~neurofabric.hdl.pipeline.SkidBuffer`) keep the block RAM outputs out of every
    ready path.
    """

    @classmethod
    def check_parameters(cls, shape, *, spike_fifo_depth=4, axon_fifo_depth=8, host_fifo_depth=8,
                         pointer_init=(), entry_init=()):
        for name, lo, hi in (("cores", 1, 255), ("neurons", 1, 1 << 16), ("axons", 1, 1 << 16),
                             ("route_entries", 1, 1 << 16)):
            value = getattr(shape, name, None)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"shape.{name} = {value!r} is out of range: allowed integers {lo}..{hi}")
        for name, depth in (("spike_fifo_depth", spike_fifo_depth), ("axon_fifo_depth", axon_fifo_depth),
                            ("host_fifo_depth", host_fifo_depth)):
            if not isinstance(depth, int) or not 2 <= depth <= 4096:
                raise ValueError(f"{name} = {depth!r} is out of range: allowed integers 2..4096")

    def __init__(self, shape, *, spike_fifo_depth=4, axon_fifo_depth=8, host_fifo_depth=8,
                 pointer_init=(), entry_init=()):
        self.shape = shape
        self.spike_fifo_depth = spike_fifo_depth
        self.axon_fifo_depth = axon_fifo_depth
        self.host_fifo_depth = host_fifo_depth
        self.pointer_init, self.entry_init = list(pointer_init), list(entry_init)
        super().__init__({
            "spikes": In(stream.Signature(range(shape.neurons))).array(shape.cores),
            "axons": Out(stream.Signature(range(shape.axons))).array(shape.cores),
            "host": Out(stream.Signature(Event)),
            **MemorySignature().members,
            "busy": Out(1),
            "spike_taken": Out(1),
            "axon_sent": Out(1),
            "host_sent": Out(1),
        })
        # FIFOs and pipeline state are built here so formal harnesses can observe them
        self._spike_fifos = [fifo.SyncFIFOBuffered(width=len(self.spikes[c].payload), depth=spike_fifo_depth)
                             for c in range(shape.cores)]
        self._axon_fifos = [fifo.SyncFIFOBuffered(width=len(self.axons[c].payload), depth=axon_fifo_depth)
                            for c in range(shape.cores)]
        self._host_fifo = fifo.SyncFIFOBuffered(width=Event.as_shape().size, depth=host_fifo_depth)
        self._p_valid = Signal()
        self._x_remaining = Signal(9)
        self._e_valid = Signal()

    def elaborate(self, platform):
        m = Module()
        shape = self.shape
        cores, neurons = shape.cores, shape.neurons
        pointer_depth = cores * neurons

        m.submodules.route_pointer = route_pointer = Memory(
            shape=RoutePointer, depth=pointer_depth, init=self.pointer_init)
        m.submodules.route_entry = route_entry = Memory(
            shape=RouteEntry, depth=shape.route_entries, init=self.entry_init)
        # one read port per memory (one block RAM wide, not two): routing and host reads
        # take turns (a host read steals a cycle in which the routing stage could accept)
        pointer_port = route_pointer.read_port()
        entry_port = route_entry.read_port()
        pointer_write = route_pointer.write_port()
        entry_write = route_entry.write_port()

        # --- input stage: one FIFO per core, round-robin arbiter -------------------------------
        spike_fifos = self._spike_fifos
        for c, f in enumerate(spike_fifos):
            m.submodules[f"spike_fifo_{c}"] = f
            wiring.connect(m, wiring.flipped(self.spikes[c]), f.w_stream)
        m.submodules.arbiter = arbiter = RoundRobinArbiter(cores)
        m.d.comb += arbiter.requests.eq(Cat(f.r_rdy for f in spike_fifos))

        # --- pointer stage ----------------------------------------------------------------------
        p_valid = self._p_valid
        p_core = Signal(range(cores))
        p_neuron = Signal(range(neurons))
        # --- expander: walks base .. base + count - 1 -----------------------------------------
        x_core = Signal(range(cores))
        x_neuron = Signal(range(neurons))
        x_addr = Signal(range(shape.route_entries))
        x_remaining = self._x_remaining
        # --- entry stage (entry_port.data is valid while e_valid) -----------------------------
        e_valid = self._e_valid
        e_core = Signal(range(cores))
        e_neuron = Signal(range(neurons))

        # register slices after both block RAM reads: no combinational path runs from a RAM
        # output into a ready signal (the RAM outputs are slow, and ready fans out widely)
        pointer_skid = SkidBuffer(data.StructLayout({
            "core": range(cores), "neuron": range(neurons), "pointer": RoutePointer}))
        entry_skid = SkidBuffer(data.StructLayout({
            "core": range(cores), "neuron": range(neurons), "entry": RouteEntry}))
        m.submodules.pointer_skid = pointer_skid
        m.submodules.entry_skid = entry_skid
        self._skids = (pointer_skid, entry_skid)

        axon_fifos, host_fifo = self._axon_fifos, self._host_fifo
        dispatch, is_host = self._dispatch(m, entry_skid.o_stream)

        # --- entry stage: entry_port.data is valid while e_valid ---------------------------------
        e_ready = ~e_valid | entry_skid.i_stream.ready
        m.d.comb += [
            entry_skid.i_stream.valid.eq(e_valid),
            entry_skid.i_stream.payload.core.eq(e_core),
            entry_skid.i_stream.payload.neuron.eq(e_neuron),
            entry_skid.i_stream.payload.entry.eq(entry_port.data),
        ]

        # --- expander: takes pointers from the pointer slice ------------------------------------
        steal_entry = Signal()      # a host read of ROUTE_ENTRY uses the entry port this cycle
        steal_pointer = Signal()    # a host read of ROUTE_POINTER uses the pointer port
        read_addr = Signal(range(max(pointer_depth, shape.route_entries)))
        issue = (x_remaining != 0) & e_ready & ~steal_entry
        x_can_load = (x_remaining == 0) | ((x_remaining == 1) & issue)
        looked_up = pointer_skid.o_stream
        pointer = looked_up.payload.pointer
        # entries are read modulo the table size (ChipModel.routes_of)
        entries_pow2 = shape.route_entries & (shape.route_entries - 1) == 0
        first_entry = pointer.base if entries_pow2 else pointer.base % shape.route_entries
        # a spike without route entries leaves without using the expander
        discard_pointer = looked_up.valid & (pointer.count == 0)
        take_pointer = looked_up.valid & (pointer.count != 0) & x_can_load
        m.d.comb += looked_up.ready.eq(discard_pointer | take_pointer)

        # --- pointer stage: pointer_port.data is valid while p_valid ------------------------------
        p_ready = ~p_valid | pointer_skid.i_stream.ready
        m.d.comb += [
            pointer_skid.i_stream.valid.eq(p_valid),
            pointer_skid.i_stream.payload.core.eq(p_core),
            pointer_skid.i_stream.payload.neuron.eq(p_neuron),
            pointer_skid.i_stream.payload.pointer.eq(pointer_port.data),
        ]

        grant_neuron = Array(f.r_data for f in spike_fifos)[arbiter.grant]
        grant = arbiter.valid & p_ready & ~steal_pointer
        for c, f in enumerate(spike_fifos):
            m.d.comb += f.r_en.eq(grant & (arbiter.grant == c))
        m.d.comb += arbiter.advance.eq(grant)

        if neurons & (neurons - 1) == 0:
            grant_address = Cat(grant_neuron[:ceil_log2(neurons)], arbiter.grant)
        else:
            grant_address = arbiter.grant * neurons + grant_neuron
        m.d.comb += [
            pointer_port.addr.eq(Mux(steal_pointer, read_addr, grant_address)),
            pointer_port.en.eq(p_ready),
        ]
        with m.If(p_ready):
            m.d.sync += [
                p_valid.eq(grant),
                p_core.eq(arbiter.grant),
                p_neuron.eq(grant_neuron),
            ]

        with m.If(take_pointer):
            m.d.sync += [
                x_core.eq(looked_up.payload.core),
                x_neuron.eq(looked_up.payload.neuron),
                x_addr.eq(first_entry),
                x_remaining.eq(pointer.count),
            ]
        with m.Elif(issue):
            m.d.sync += [
                x_addr.eq(Mux(x_addr == shape.route_entries - 1, 0, x_addr + 1)),
                x_remaining.eq(x_remaining - 1),
            ]

        m.d.comb += [
            entry_port.addr.eq(Mux(steal_entry, read_addr, x_addr)),
            entry_port.en.eq(e_ready),
        ]
        with m.If(e_ready):
            m.d.sync += [
                e_valid.eq(issue),
                e_core.eq(x_core),
                e_neuron.eq(x_neuron),
            ]

        m.d.comb += [
            self.spike_taken.eq(grant),
            self.axon_sent.eq(dispatch & ~is_host),
            self.host_sent.eq(dispatch & is_host),
            self.busy.eq(Cat(f.level != 0 for f in spike_fifos + axon_fifos + [host_fifo]).any()
                         | p_valid | (x_remaining != 0) | e_valid
                         | pointer_skid.o_stream.valid | entry_skid.o_stream.valid),
        ]

        # --- route table access -------------------------------------------------------------------
        self._route_table_access(m, pointer_port, entry_port, pointer_write, entry_write,
                                 p_ready, e_ready, steal_pointer, steal_entry, read_addr)
        return m

    def _dispatch(self, m, routed):
        """The output FIFOs, and the dispatch of each entry from the entry slice (`routed`) into
        its destination's FIFO. (a dispatch this cycle, to the host)."""
        # output FIFOs
        axon_fifos = self._axon_fifos
        for c, f in enumerate(axon_fifos):
            m.submodules[f"axon_fifo_{c}"] = f
            wiring.connect(m, f.r_stream, wiring.flipped(self.axons[c]))
        host_fifo = self._host_fifo
        m.submodules.host_fifo = host_fifo
        wiring.connect(m, host_fifo.r_stream, wiring.flipped(self.host))

        entry = routed.payload.entry
        is_host = entry.kind == RouteKind.HOST
        axon_ready = Array(f.w_rdy for f in axon_fifos)
        dispatch_ready = Mux(is_host, host_fifo.w_rdy, axon_ready[entry.core])
        dispatch = routed.valid & dispatch_ready
        m.d.comb += routed.ready.eq(dispatch_ready)
        for c, f in enumerate(axon_fifos):
            m.d.comb += [
                f.w_data.eq(entry.axon),
                f.w_en.eq(routed.valid & ~is_host & (entry.core == c)),
            ]
        host_event = Signal(Event)
        m.d.comb += [
            host_event.kind.eq(EventKind.SPIKE),
            host_event.core.eq(routed.payload.core),
            host_event.index.eq(routed.payload.neuron),
            host_fifo.w_data.eq(host_event),
            host_fifo.w_en.eq(routed.valid & is_host),
        ]

        return dispatch, is_host

    def _route_table_access(self, m, pointer_port, entry_port, pointer_write, entry_write,
                            p_ready, e_ready, steal_pointer, steal_entry, read_addr):
        """Host access to the route table (``mem``/``mem_resp``): writes are checked and land in
        the cycle they are accepted; a read waits for a cycle in which the routing stage could
        use its memory's read port (`p_ready`/`e_ready`) and takes it (`steal_pointer`,
        `steal_entry`, at `read_addr`)."""
        shape = self.shape
        cores, pointer_depth = shape.cores, shape.cores * shape.neurons
        request = self.mem.payload
        resp_valid = Signal()
        resp_data = Signal(32)
        read_waiting = Signal()     # an accepted read waits for its memory's read port
        read_pending = Signal()     # the read data is out this cycle
        read_space = Signal(MemorySpace)
        read_in_range = Signal()
        is_pointer = request.mem == MemorySpace.ROUTE_POINTER
        m.d.comb += [
            self.mem.ready.eq(~resp_valid & ~read_waiting & ~read_pending),
            self.mem_resp.valid.eq(resp_valid),
            self.mem_resp.payload.eq(resp_data),
        ]
        accept = self.mem.valid & self.mem.ready
        # a waiting read takes its port in a cycle in which the routing stage could read
        # (from registers only: no path from the request into the routing pipeline)
        read_is_pointer = read_space == MemorySpace.ROUTE_POINTER
        m.d.comb += [
            steal_pointer.eq(read_waiting & read_is_pointer & p_ready),
            steal_entry.eq(read_waiting & ~read_is_pointer & e_ready),
        ]
        with m.If(steal_pointer | steal_entry):
            m.d.sync += [read_waiting.eq(0), read_pending.eq(1)]
        pointer_in_range = request.addr < pointer_depth
        entry_in_range = request.addr < shape.route_entries
        new_pointer = RoutePointer(request.data[:RoutePointer.as_shape().size])
        new_entry = RouteEntry(request.data[:RouteEntry.as_shape().size])
        pointer_ok = pointer_in_range & (request.data[RoutePointer.as_shape().size:] == 0)
        entry_ok = entry_in_range & (request.data[RouteEntry.as_shape().size:] == 0) & (
            (new_entry.kind == RouteKind.HOST)
            | ((new_entry.core < cores) & (new_entry.axon < shape.axons) & (new_entry.chip == 0)))
        m.d.comb += [
            pointer_write.addr.eq(request.addr),
            pointer_write.data.eq(new_pointer),
            pointer_write.en.eq(accept & request.write & is_pointer & pointer_ok),
            entry_write.addr.eq(request.addr),
            entry_write.data.eq(Mux(new_entry.kind == RouteKind.HOST,
                                    RouteEntry.const({"kind": RouteKind.HOST}).as_value(), new_entry)),
            entry_write.en.eq(accept & request.write & ~is_pointer & entry_ok),
        ]
        with m.If(accept):
            with m.If(request.write):
                m.d.sync += [
                    resp_valid.eq(1),
                    resp_data.eq(Mux(Mux(is_pointer, pointer_ok, entry_ok), MEM_OK, MEM_REFUSED)),
                ]
            with m.Else():
                m.d.sync += [
                    read_waiting.eq(1),
                    read_space.eq(request.mem),
                    read_addr.eq(request.addr),
                    read_in_range.eq(Mux(is_pointer, pointer_in_range, entry_in_range)),
                ]
        with m.If(read_pending):
            stored = Mux(read_space == MemorySpace.ROUTE_POINTER,
                         pointer_port.data.as_value(), entry_port.data.as_value())
            m.d.sync += [
                read_pending.eq(0),
                resp_valid.eq(1),
                resp_data.eq(Mux(read_in_range, stored, 0)),
            ]
        with m.If(self.mem_resp.valid & self.mem_resp.ready):
            m.d.sync += resp_valid.eq(0)


def event_bits(kind, core=0, index=0):
    """The 32-bit word of an :class:`Event` (for benches and the host)."""
    return Event.const({"kind": kind, "core": core, "index": index}).as_bits()


def route_pointer_bits(base, count):
    """The data word of a ``ROUTE_POINTER`` write."""
    return RoutePointer.const({"base": base, "count": count}).as_bits()


def route_entry_bits(*, host=False, core=0, axon=0):
    """The data word of a ``ROUTE_ENTRY`` write."""
    return RouteEntry.const({"kind": RouteKind.HOST if host else RouteKind.AXON,
                             "core": core, "axon": axon}).as_bits()

