"""The chip: neuron cores, the AER router and the time-step controller behind one set of ports.

::

    inject --> StepController --deliver--> slice --> axon mux[c] --> core[c].axon_in
    run    -->        |   update ------------------------> core[c].step
                      |                                     core[c].spike_out --> Router
                      |                 Router.axons[c] --> axon mux[c]
    out    <-- marker + Router.host

A step runs as ``ChipModel.step`` does (docs/router.md): the inputs tagged with the step are
delivered, the cores update, their spikes are routed (to axons for the next step, and to the
host as SPIKE events); when every core is idle and the router and all FIFOs are empty, a STEP
marker (``index`` = step & 0xFFFF) follows that step's spikes on ``out``.

Memory requests: ``ROUTE_POINTER``/``ROUTE_ENTRY`` go to the router, ``COUNTER`` and ``CHIP``
are answered here, every other space goes to core ``core``. One request is handled at a time
and each gets exactly one response. Core and route-table requests are carried out between
steps (the controller holds the next step back until they are done), so a host must keep
reading ``out`` while it waits for a response. Requests naming a core that does not exist, a
write to a read-only register, or an unknown register answer :data:`MEM_REFUSED` for writes
and 0 for reads.

Learning (``learning=True``, docs/learning_hw.md): every core gets the chip registers
``ChipRegister.LEARNING`` (its ``learn`` input) and ``ChipRegister.REWARD`` (its ``reward``
input). ``MemorySpace.STDP`` address ``StdpField.REWARD`` of any existing core is that same
chip register, as in ``ChipModel``: it is read and written here, never forwarded. Writes of
LEARNING (0 or 1) and REWARD (a sign-extended 8-bit word) wait, like core requests, until the
chip is between steps, so a step always learns with one reward; a word out of range answers
:data:`MEM_REFUSED` and changes nothing.

Input encoder (``shape.encoder_channels > 0``, :mod:`neurofabric.hdl.encoder`): the controller's
``starting`` pulse starts a sweep of every channel (when the encoder is enabled); its AXON events
go to the cores' axons after the routed spikes and before the host inputs of the step (host
inputs wait while the sweep runs), and the chip is not idle until the sweep is done, so the
update waits for it. ``MemorySpace.ENCODER`` and the registers ``ChipRegister.ENCODER`` /
``ENCODER_SEED`` / ``ENCODER_STEPS`` are forwarded to the encoder between steps, like
route-table requests; on a chip without an encoder they answer :data:`MEM_REFUSED` (writes)
and 0 (reads).
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent
from neurofabric.hdl.controller import StepController
from neurofabric.hdl.core import NeuronCore
from neurofabric.hdl.core_memory import MemorySignature
from neurofabric.hdl.encoder import InputEncoder
from neurofabric.hdl.pipeline import SkidBuffer
from neurofabric.hdl.protocol import (
    ChipRegister,
    Counter,
    EncoderTarget,
    Event,
    InputEvent,
    MemorySpace,
    MemRequest,
    StdpField,
)
from neurofabric.hdl.router import MEM_OK, MEM_REFUSED, Router

__all__ = ["Chip", "ChipSignature", "MEM_OK", "MEM_REFUSED"]


class ChipSignature(wiring.Signature):
    """The ports of a :class:`Chip` (members from the chip's side): the memory port ``mem`` /
    ``mem_resp`` (:class:`~neurofabric.hdl.core_memory.MemorySignature`), ``inject`` (input
    events), ``run`` (step counts), ``out`` (SPIKE events and STEP markers), ``step`` (the steps
    done), ``running`` and ``input_free`` (entries free in the input queue)."""

    def __init__(self):
        super().__init__({
            **MemorySignature().members,
            "inject": In(stream.Signature(InputEvent)),
            "run": In(stream.Signature(32)),
            "out": Out(stream.Signature(Event)),
            "step": Out(32),
            "running": Out(1),
            "input_free": Out(17),      #: entries free in the input queue now (INJECT never waits)
        })

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))


class Chip(CheckedComponent):
    """`shape.cores` neuron cores joined by the router, sequenced by the step controller.

    `core_factory(index)` builds core `index` (default: ``NeuronCore(neurons, axons, lanes,
    learning=learning, request_held=True)`` from :mod:`neurofabric.hdl.core`); any component
    with the core's ports (:class:`~neurofabric.hdl.core.CoreSignature`) works (the chip holds
    ``mem.payload`` from a request's acceptance until its response is taken). With
    ``learning=True`` every core must have the ``learn`` and ``reward`` inputs of a learning
    ``NeuronCore``; they are driven from the chip registers.
    `input_queue_depth` input events can wait ahead of the running step. FIFO depths of the
    router and `route_init` = (pointer_init, entry_init) are passed through to the router.
    With `request_held`, the driver of `mem` keeps ``mem.payload`` unchanged from a request's
    acceptance until its response has been taken (as :class:`~neurofabric.hdl.link.HostLink`
    does), and the chip keeps no copy of the request (69 flip-flops fewer).
    """

    @classmethod
    def check_parameters(cls, shape, *, core_factory=None, input_queue_depth=64, spike_fifo_depth=4,
                         axon_fifo_depth=8, host_fifo_depth=8, route_init=None, learning=False,
                         request_held=False):
        if not isinstance(learning, bool):
            raise ValueError(f"learning must be True or False, not {learning!r}")
        if not isinstance(request_held, bool):
            raise ValueError(f"request_held must be True or False, not {request_held!r}")
        Router.check_parameters(shape, spike_fifo_depth=spike_fifo_depth, axon_fifo_depth=axon_fifo_depth,
                                host_fifo_depth=host_fifo_depth)
        StepController.check_parameters(cores=shape.cores, axons=shape.axons, queue_depth=input_queue_depth)

    def __init__(self, shape, *, core_factory=None, input_queue_depth=64, spike_fifo_depth=4,
                 axon_fifo_depth=8, host_fifo_depth=8, route_init=None, learning=False,
                 request_held=False):
        self.shape = shape
        self.learning = learning
        self.request_held = request_held
        self.core_factory = core_factory
        self.input_queue_depth = input_queue_depth
        self.router_depths = dict(spike_fifo_depth=spike_fifo_depth, axon_fifo_depth=axon_fifo_depth,
                                  host_fifo_depth=host_fifo_depth)
        if core_factory is None:
            # the chip holds each core's mem.payload (its `request` register) until the response
            core_factory = lambda index: NeuronCore(shape.neurons, shape.axons, shape.lanes,  # noqa: E731
                                                    learning=learning, request_held=True)
        self.cores = [core_factory(index) for index in range(shape.cores)]
        if learning:
            for index, core in enumerate(self.cores):
                members = core.signature.members
                if "learn" not in members or "reward" not in members:
                    raise ValueError(f"learning=True needs cores with learn and reward inputs; "
                                     f"core {index} ({type(core).__name__}) has none")
        # the parts (their parameters were checked before the chip was created)
        pointer_init, entry_init = route_init or ((), ())
        self.router = Router(shape, **self.router_depths, pointer_init=pointer_init, entry_init=entry_init)
        self.controller = StepController(cores=shape.cores, axons=shape.axons, queue_depth=input_queue_depth)
        # the slice carries only what the cores need of an input event: its core and axon
        self._deliver_slice = SkidBuffer(data.StructLayout({"axon": range(shape.axons),
                                                            "core": range(shape.cores)}))
        self.encoder_channels = shape.encoder_channels
        self.encoder = InputEncoder(shape) if shape.encoder_channels else None
        super().__init__(ChipSignature())

    def elaborate(self, platform):
        m = Module()
        m.submodules.router = router = self.router
        m.submodules.controller = controller = self.controller
        cores = self.cores
        for index, core in enumerate(cores):
            m.submodules[f"core_{index}"] = core

        wiring.connect(m, wiring.flipped(self.inject), controller.inject)
        wiring.connect(m, wiring.flipped(self.run), controller.run)
        m.d.comb += [
            self.step.eq(controller.step),
            self.running.eq(controller.running),
            self.input_free.eq(controller.input_free),
        ]

        self._feed_cores(m)
        # --- output: the router's host events, then the step marker ------------------------------
        with m.If(router.host.valid):
            wiring.connect(m, router.host, wiring.flipped(self.out))
        with m.Else():
            wiring.connect(m, controller.marker, wiring.flipped(self.out))

        counters = self._counters(m)
        # --- chip registers --------------------------------------------------------------------
        learning = Signal(init=1)
        reward = Signal(8, init=1)
        if self.learning:
            for core in cores:
                m.d.comb += [core.learn.eq(learning), core.reward.eq(reward.as_signed())]

        self._memory_requests(m, counters, learning, reward)
        return m

    def _feed_cores(self, m):
        """Cores <-> router, and the inputs of the cores: routed events first, then the input
        encoder's, then the host's; the controller learns when everything is idle."""
        controller, router, cores = self.controller, self.router, self.cores
        # host inputs pass a register slice: the controller's step-tag compare stays out of the
        # cores' input logic
        m.submodules.deliver_slice = deliver_slice = self._deliver_slice
        m.d.comb += [
            deliver_slice.i_stream.valid.eq(controller.deliver.valid),
            deliver_slice.i_stream.payload.axon.eq(controller.deliver.payload.axon),
            deliver_slice.i_stream.payload.core.eq(controller.deliver.payload.core),
            controller.deliver.ready.eq(deliver_slice.i_stream.ready),
        ]
        deliver = deliver_slice.o_stream
        deliver_ready = Signal()
        # the input encoder's events: after routed spikes, before host inputs (which wait)
        encoder = self.encoder
        encoded = stream.Signature(EncoderTarget).create()     # stays idle without an encoder
        encoder_busy = Signal()
        if encoder is not None:
            m.submodules.encoder = encoder
            m.d.comb += [encoder.start.eq(controller.starting), encoder_busy.eq(encoder.busy)]
            encoded = encoder.events
        encoded_ready = Signal()
        for index, core in enumerate(cores):
            wiring.connect(m, core.spike_out, router.spikes[index])
            routed = router.axons[index]
            mine = deliver.valid & (deliver.payload.core == index)
            # routed events first; host inputs are only offered between steps, when the router
            # is empty, so neither source waits on the other in practice
            with m.If(routed.valid):
                m.d.comb += [
                    core.axon_in.valid.eq(1),
                    core.axon_in.payload.eq(routed.payload),
                    routed.ready.eq(core.axon_in.ready),
                ]
            with m.Elif(encoded.valid):
                with m.If(encoded.payload.core == index):
                    m.d.comb += [
                        core.axon_in.valid.eq(1),
                        core.axon_in.payload.eq(encoded.payload.axon),
                        encoded_ready.eq(core.axon_in.ready),
                    ]
            with m.Else():
                m.d.comb += [
                    core.axon_in.valid.eq(mine & ~encoder_busy),
                    core.axon_in.payload.eq(deliver.payload.axon),
                ]
                with m.If(mine & ~encoder_busy):
                    m.d.comb += deliver_ready.eq(core.axon_in.ready)
            m.d.comb += core.step.eq(controller.update)
        m.d.comb += [deliver.ready.eq(deliver_ready), encoded.ready.eq(encoded_ready)]

        cores_busy = Cat(core.busy for core in cores).any()
        m.d.comb += controller.idle.eq(~cores_busy & ~router.busy & ~deliver.valid & ~controller.deliver.valid
                                       & ~encoder_busy)


    def _counters(self, m):
        """The chip's event counters (``MemorySpace.COUNTER``), by :class:`Counter`."""
        shape, controller, router = self.shape, self.controller, self.router
        counters = {c: Signal(32, name=f"counter_{c.name.lower()}") for c in Counter}
        pulses = {
            Counter.STEPS: controller.step_done,
            Counter.INPUT_EVENTS: controller.delivered,
            Counter.ROUTED_EVENTS: router.axon_sent,
            Counter.SPIKES: router.spike_taken,
            Counter.HOST_SPIKES: router.host_sent,
            Counter.LATE_INPUTS: controller.late,
            Counter.OUTPUT_STALLS: self.out.valid & ~self.out.ready,
        }
        for counter, pulse in pulses.items():
            if counter is Counter.ROUTED_EVENTS:
                continue
            with m.If(pulse):
                m.d.sync += counters[counter].eq(counters[counter] + 1)
        # routed events count when the step that integrates them starts (as in ChipModel.step)
        # (at most cores * neurons spikes of one step, 255 route entries each)
        routed_pending = Signal(range(shape.cores * shape.neurons * 255 + 1))
        with m.If(controller.starting):
            m.d.sync += [
                counters[Counter.ROUTED_EVENTS].eq(counters[Counter.ROUTED_EVENTS] + routed_pending),
                routed_pending.eq(router.axon_sent),
            ]
        with m.Elif(router.axon_sent):
            m.d.sync += routed_pending.eq(routed_pending + 1)

        return counters

    def _memory_requests(self, m, counters, learning, reward):
        """The chip's memory port: requests to the router, the encoder and the cores are
        forwarded between steps; COUNTER, CHIP and the chip's STDP REWARD are answered here."""
        shape, controller, router, cores, encoder = (self.shape, self.controller, self.router, self.cores,
                                                     self.encoder)
        request = self.mem.payload if self.request_held else Signal(MemRequest)
        resp_data = Signal(32)
        is_router = (request.mem == MemorySpace.ROUTE_POINTER) | (request.mem == MemorySpace.ROUTE_ENTRY)
        core_exists = request.core < shape.cores
        # STDP REWARD of any core is the chip's REWARD register (as in ChipModel)
        is_stdp_reward = (request.mem == MemorySpace.STDP) & (request.addr == StdpField.REWARD) & core_exists
        is_local = (request.mem == MemorySpace.COUNTER) | (request.mem == MemorySpace.CHIP) | is_stdp_reward
        is_encoder = (request.mem == MemorySpace.ENCODER) | ((request.mem == MemorySpace.CHIP) & (
            (request.addr == ChipRegister.ENCODER) | (request.addr == ChipRegister.ENCODER_SEED)
            | (request.addr == ChipRegister.ENCODER_STEPS)))
        core_forward = Signal()         # offer `request` to core `request.core`
        core_forward_ready = Signal()
        core_relay = Signal()           # pass that core's response on
        core_resp_valid = Signal()
        core_resp_data = Signal(32)
        for index, core in enumerate(cores):
            selected = request.core == index
            m.d.comb += [
                core.mem.payload.eq(request),
                core.mem.valid.eq(core_forward & selected),
                core.mem_resp.ready.eq(core_relay & selected & self.mem_resp.ready),
            ]
            with m.If(selected):
                m.d.comb += [
                    core_forward_ready.eq(core.mem.ready),
                    core_resp_valid.eq(core.mem_resp.valid),
                    core_resp_data.eq(core.mem_resp.payload),
                ]

        counter_value = Array(counters[c] for c in Counter)[request.addr[:4]]
        counter_known = request.addr < len(Counter)
        local_read = Signal(32)
        with m.Switch(request.mem):
            with m.Case(MemorySpace.COUNTER):
                m.d.comb += local_read.eq(Mux(counter_known, counter_value, 0))
            with m.Case(MemorySpace.CHIP):
                with m.Switch(request.addr):
                    with m.Case(ChipRegister.STEP):
                        m.d.comb += local_read.eq(controller.step)
                    with m.Case(ChipRegister.LEARNING):
                        m.d.comb += local_read.eq(learning)
                    with m.Case(ChipRegister.REWARD):
                        m.d.comb += local_read.eq(reward.as_signed())
            with m.Case(MemorySpace.STDP):
                m.d.comb += local_read.eq(reward.as_signed())
        # writable registers and the words they take (as ChipModel.write_words checks them)
        is_chip = request.mem == MemorySpace.CHIP
        reward_word_ok = (request.data[7:] == 0) | (request.data[7:] == (1 << 25) - 1)
        learning_ok = is_chip & (request.addr == ChipRegister.LEARNING) & (request.data[1:] == 0)
        reward_ok = ((is_chip & (request.addr == ChipRegister.REWARD)) | is_stdp_reward) & reward_word_ok
        writable = learning_ok | reward_ok

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.mem.ready.eq(1)
                with m.If(self.mem.valid):
                    if not self.request_held:
                        m.d.sync += request.eq(self.mem.payload)
                    m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(is_encoder):
                    if encoder is not None:
                        m.next = "WAIT_REST"
                    else:
                        m.d.sync += resp_data.eq(Mux(request.write, MEM_REFUSED, 0))
                        m.next = "RESPOND"
                with m.Elif(is_local):
                    with m.If(request.write & writable):
                        m.next = "WAIT_REST_LOCAL"
                    with m.Elif(request.write):
                        m.d.sync += resp_data.eq(MEM_REFUSED)
                        m.next = "RESPOND"
                    with m.Else():
                        m.d.sync += resp_data.eq(local_read)
                        m.next = "RESPOND"
                with m.Elif(is_router | core_exists):
                    m.next = "WAIT_REST"
                with m.Else():
                    m.d.sync += resp_data.eq(Mux(request.write, MEM_REFUSED, 0))
                    m.next = "RESPOND"
            with m.State("WAIT_REST_LOCAL"):    # register writes land between steps
                m.d.comb += controller.hold.eq(1)
                with m.If(controller.resting):
                    with m.If(learning_ok):
                        m.d.sync += learning.eq(request.data[0])
                    with m.If(reward_ok):
                        m.d.sync += reward.eq(request.data[:8])
                    m.d.sync += resp_data.eq(MEM_OK)
                    m.next = "RESPOND"
            with m.State("WAIT_REST"):
                m.d.comb += controller.hold.eq(1)
                with m.If(controller.resting):
                    m.next = "FORWARD"
            with m.State("FORWARD"):
                m.d.comb += controller.hold.eq(1)
                with m.If(is_router):
                    m.d.comb += [router.mem.valid.eq(1), router.mem.payload.eq(request)]
                    with m.If(router.mem.ready):
                        m.next = "RELAY"
                if encoder is not None:
                    with m.Elif(is_encoder):
                        m.d.comb += [encoder.mem.valid.eq(1), encoder.mem.payload.eq(request)]
                        with m.If(encoder.mem.ready):
                            m.next = "RELAY"
                with m.Else():
                    m.d.comb += core_forward.eq(1)
                    with m.If(core_forward_ready):
                        m.next = "RELAY"
            with m.State("RELAY"):
                m.d.comb += controller.hold.eq(1)
                with m.If(is_router):
                    m.d.comb += [
                        self.mem_resp.valid.eq(router.mem_resp.valid),
                        self.mem_resp.payload.eq(router.mem_resp.payload),
                        router.mem_resp.ready.eq(self.mem_resp.ready),
                    ]
                if encoder is not None:
                    with m.Elif(is_encoder):
                        m.d.comb += [
                            self.mem_resp.valid.eq(encoder.mem_resp.valid),
                            self.mem_resp.payload.eq(encoder.mem_resp.payload),
                            encoder.mem_resp.ready.eq(self.mem_resp.ready),
                        ]
                with m.Else():
                    m.d.comb += [
                        core_relay.eq(1),
                        self.mem_resp.valid.eq(core_resp_valid),
                        self.mem_resp.payload.eq(core_resp_data),
                    ]
                with m.If(self.mem_resp.valid & self.mem_resp.ready):
                    m.next = "IDLE"
            with m.State("RESPOND"):
                m.d.comb += [self.mem_resp.valid.eq(1), self.mem_resp.payload.eq(resp_data)]
                with m.If(self.mem_resp.ready):
                    m.next = "IDLE"

