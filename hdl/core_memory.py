"""The neuron core's register/memory port and the bus it drives to the core's components.

:class:`CoreMemoryPort` takes the core's ``mem`` requests and carries each through three
cycles on a :class:`CoreBus`, which every component holding a memory or register of the core
(:mod:`~neurofabric.hdl.integrator`, :mod:`~neurofabric.hdl.sweep`, :mod:`~neurofabric.hdl.stdp`)
listens to: *access* (the component addresses its memories with the request and writes),
*collect* (the read data comes out of the memories into registers) and *respond* (each component
offers the word read for the request on its ``read_data``, 0 when the request is not its own;
the port ORs them into the response).
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from neurofabric.hdl.memory_map import MEMORY_MAP
from neurofabric.hdl.protocol import ChipShape, MemRequest

__all__ = ["CoreBus", "CoreDecoder", "core_shape", "CoreMemoryPort", "MemorySignature", "pipeline_register"]


class MemorySignature(wiring.Signature):
    """The memory port of a core, the router, the encoder or the chip: requests on ``mem``
    (:class:`MemRequest`) and exactly one 32-bit response per request on ``mem_resp``
    (from the side that answers them: ``mem`` is ``In``, ``mem_resp`` is ``Out``)."""

    def __init__(self):
        super().__init__({
            "mem": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(32)),
        })

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))


class CoreBus(wiring.Signature):
    """A request as the core's components see it (members from the driving port's side).

    - ``request`` (:class:`MemRequest`): the request, unchanged from `access` to `respond`.
    - ``access``: 1 cycle: the memories are addressed by `request` (and written by a write).
    - ``collect``: the next cycle: the memories' read data is valid.
    - ``respond``: the next cycle: the response is taken from the components' ``read_data``.
    """

    def __init__(self):
        super().__init__({
            "request": Out(MemRequest),
            "access": Out(1),
            "collect": Out(1),
            "respond": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))


def core_shape(neurons, axons, lanes):
    """The :class:`ChipShape` of a one-core chip with this core (for the memory map)."""
    return ChipShape(cores=1, neurons=neurons, axons=axons, lanes=lanes)


class CoreDecoder:
    """Decodes the requests of a core of ChipShape `shape` (:func:`core_shape`) by
    :data:`~neurofabric.hdl.memory_map.MEMORY_MAP`: the sizes of its spaces, the addresses of
    its registers and records, and the layouts of their words."""

    def __init__(self, request, shape):
        self.request, self.shape = request, shape

    def size(self, space):
        """The number of words of `space` in the core."""
        return MEMORY_MAP[space].size(self.shape)

    def hit(self, space):
        """The request names memory space `space` and an address inside it."""
        return (self.request.mem == space) & (self.request.addr < self.size(space))

    def address(self, space, key, row=0):
        """The address of row `row` of block `key` of `space` (a register: row 0)."""
        return MEMORY_MAP[space].address(self.shape, key, row)

    def register_hit(self, space, key):
        """The request names register `key` of the register file `space`."""
        return (self.request.mem == space) & (self.request.addr == self.address(space, key))

    def record(self, space):
        """(row, field index) of the request's address in a space of interleaved records (a
        power-of-two number of words each): the field index is compared with
        :meth:`address` ``(space, key)``."""
        bits = exact_log2(len(MEMORY_MAP[space].blocks))
        return self.request.addr >> bits, self.request.addr[:bits]

    def word(self, space, key=None):
        """The request's data as a view of the layout of block `key` (default: the only block)
        of `space`."""
        blocks = MEMORY_MAP[space].blocks
        (block,) = [b for b in blocks if key is None or b.key == key]
        return block.word.layout(self.request.data)


def pipeline_register(m, name, value, shape=None):
    """A register of module `m` holding `value` one cycle later. Only valid bits (names
    containing ``valid``) are reset; data registers are reset-less (cheaper)."""
    register = Signal(shape if shape is not None else value.shape(), name=name,
                      reset_less="valid" not in name)
    m.d.sync += register.eq(value)
    return register


class CoreMemoryPort(wiring.Component):
    """Takes one request at a time on ``mem`` and answers it on ``mem_resp``.

    A request is accepted while ``allow`` is high and no other request is in progress; the
    cycle after, ``bus.access``; then ``bus.collect``; then ``bus.respond``, in which the
    response word (``read_data``, 0 for writes) is registered: it is offered on ``mem_resp``
    from the next cycle, four cycles after acceptance, until taken. ``pending`` is high from
    ``access`` until the response is taken.

    With `request_held`, the driver of ``mem`` keeps ``mem.payload`` unchanged from a request's
    acceptance until its response has been taken, and ``bus.request`` is ``mem.payload``;
    otherwise the port registers the request.
    """

    def __init__(self, *, request_held):
        self.request_held = request_held
        super().__init__({
            **MemorySignature().members,
            "allow": In(1),
            "bus": Out(CoreBus()),
            "read_data": In(32),
            "pending": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        accepted = self.mem.valid & self.mem.ready
        if self.request_held:
            m.d.comb += bus.request.eq(self.mem.payload)
        else:
            request = Signal(MemRequest)
            with m.If(accepted):
                m.d.sync += request.eq(self.mem.payload)
            m.d.comb += bus.request.eq(request)

        access, collect, respond = Signal(), Signal(), Signal()
        m.d.sync += [access.eq(accepted), collect.eq(access), respond.eq(collect)]
        m.d.comb += [bus.access.eq(access), bus.collect.eq(collect), bus.respond.eq(respond)]

        resp_valid = Signal()
        resp_data = Signal(32)
        m.d.comb += [self.mem_resp.valid.eq(resp_valid), self.mem_resp.payload.eq(resp_data)]
        with m.If(self.mem_resp.ready):
            m.d.sync += resp_valid.eq(0)
        with m.If(respond):
            m.d.sync += [resp_valid.eq(1), resp_data.eq(self.read_data)]

        m.d.comb += [
            self.pending.eq(access | collect | respond | resp_valid),
            self.mem.ready.eq(self.allow & ~self.pending),
        ]
        return m
