"""Pieces shared by the cocotb benches (tests/tb_*.py): the `mem` / `mem_resp` request port.

Runs inside the cocotb simulation process; imports cocotb, so import it only from benches.
"""

from cocotb.triggers import FallingEdge, ReadOnly

from neurofabric.hdl.protocol import MemorySpace, MemRequest

__all__ = ["mem_request", "mem_transfer", "to_signed32"]


def mem_request(space, addr, data=0, write=False, core=0):
    """The bits of one :class:`MemRequest` (``data`` taken modulo 2**32)."""
    return MemRequest.const({"addr": addr, "data": data & 0xFFFF_FFFF, "mem": MemorySpace(space),
                             "core": core, "write": int(write)}).as_bits()


def to_signed32(word):
    """A 32-bit response word as a signed integer."""
    return word - (1 << 32) if word & (1 << 31) else word


async def mem_transfer(dut, request, *, what="mem", budget=200):
    """Offer `request` (bits) on ``dut.mem`` and return the raw 32-bit word from
    ``dut.mem_resp``; each wait is bounded by `budget` cycles. Drives on falling edges."""
    await FallingEdge(dut.clk)
    dut.mem__payload.value = request
    dut.mem__valid.value = 1
    dut.mem_resp__ready.value = 1
    for _ in range(budget):
        await ReadOnly()
        accepted = int(dut.mem__ready.value)
        await FallingEdge(dut.clk)
        if accepted:
            break
    else:
        raise AssertionError(f"{what} request not accepted within {budget} cycles")
    dut.mem__valid.value = 0
    for _ in range(budget):
        await ReadOnly()
        if int(dut.mem_resp__valid.value):
            response = int(dut.mem_resp__payload.value)
            await FallingEdge(dut.clk)
            dut.mem_resp__ready.value = 0
            return response
        await FallingEdge(dut.clk)
    raise AssertionError(f"no response to a {what} request within {budget} cycles")
