"""Pipeline building blocks for `amaranth.lib.stream` interfaces.

:class:`SkidBuffer` is the register slice the rest of the gateware uses to cut long
combinational paths through valid/ready handshakes (router stages, core pipelines).
"""

from amaranth.hdl import Assert, Module, Shape, ShapeCastable, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from neurofabric.hdl.checked import CheckedComponent

__all__ = ["SkidBuffer"]


class SkidBuffer(CheckedComponent):
    """Two-entry stream register slice ("skid buffer") with registered ``ready`` and ``valid``.

    ``o_stream.valid``, ``o_stream.payload`` and ``i_stream.ready`` all come straight from
    flip-flops, so no combinational path crosses the slice in either direction.

    Cycle behaviour:

    * latency: a payload accepted on ``i_stream`` at cycle *t* is offered on ``o_stream`` from
      cycle *t* + 1;
    * throughput: one transfer per cycle while ``o_stream.ready`` stays high;
    * back-pressure: when the output stalls, one more payload is accepted into the skid
      register, then ``i_stream.ready`` drops on the next cycle and rises again one cycle after
      the output drains;
    * never loses, duplicates or reorders a payload; ``o_stream.valid`` and ``o_stream.payload``
      hold steady until the transfer (as `lib.stream` requires), whatever the input does;
    * after reset the slice is empty (``i_stream.ready`` = 1, ``o_stream.valid`` = 0).

    Parameters
    ----------
    payload_shape : shape-castable
        Shape of the payload (an int width, ``signed(n)``, a ``data.Layout``, ...).

    Members
    -------
    i_stream : ``In(stream.Signature(payload_shape))``
    o_stream : ``Out(stream.Signature(payload_shape))``

    Attributes
    ----------
    skid_valid, skid_payload : Signal
        The skid register (second entry); read-only, for formal harnesses.
    """

    @classmethod
    def check_parameters(cls, payload_shape):
        if not isinstance(payload_shape, ShapeCastable):
            try:
                Shape.cast(payload_shape)
            except TypeError as error:
                raise TypeError(
                    f"payload_shape: {payload_shape!r} is not a shape-castable object "
                    f"(expected an int width, signed(n)/unsigned(n), or a data layout)") from error

    def __init__(self, payload_shape):
        self.payload_shape = payload_shape
        super().__init__({
            "i_stream": In(stream.Signature(payload_shape)),
            "o_stream": Out(stream.Signature(payload_shape)),
        })
        # Internal state, readable by verification harnesses (never drive these).
        self.skid_valid = Signal()
        self.skid_payload = Signal.like(self.i_stream.payload, name="skid_payload")

    def elaborate(self, platform):
        m = Module()

        skid_valid = self.skid_valid
        skid_payload = self.skid_payload
        out_valid = Signal()
        out_payload = Signal.like(self.o_stream.payload, name="out_payload")

        m.d.comb += [
            self.i_stream.ready.eq(~skid_valid),
            self.o_stream.valid.eq(out_valid),
            self.o_stream.payload.eq(out_payload),
        ]

        with m.If(self.o_stream.ready | ~out_valid):
            # The output register is free (or being emptied): refill it, skid first.
            with m.If(skid_valid):
                m.d.sync += [out_payload.eq(skid_payload), out_valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [out_payload.eq(self.i_stream.payload), out_valid.eq(self.i_stream.valid)]
        with m.Elif(self.i_stream.valid & self.i_stream.ready):
            # Output stalled: the payload accepted this cycle waits in the skid register.
            m.d.sync += [skid_payload.eq(self.i_stream.payload), skid_valid.eq(1)]

        # The skid register only fills behind a full output register.
        m.d.sync += Assert(~skid_valid | out_valid, "SkidBuffer: skid register full while output empty")

        return m
