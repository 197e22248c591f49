"""The neurofabric host library: describe or import a network, compile it onto the chip's
cores, load it, stream spikes in and out, control learning and read weights back, with one API
for the bit-exact model, the Verilator sim device and boards (docs/host.md)."""

from neurofabric.host.chip import Chip, DeviceUnavailable, Progress, RunResult
from neurofabric.host.compiler import CompiledNetwork, ConnectionReport, MemoryWrite, compile_network
from neurofabric.host.encoding import bernoulli_encode, rate_encode
from neurofabric.host.model import ChipShape
from neurofabric.host.network import (
    IF,
    LIF,
    STDP,
    CapacityError,
    Connection,
    EventError,
    Network,
    Population,
    RangeError,
    ShapeError,
    ValidationError,
)

__all__ = [
    "Network", "Population", "Connection", "LIF", "IF", "STDP", "Chip", "ChipShape", "RunResult", "Progress",
    "CompiledNetwork", "ConnectionReport", "MemoryWrite", "compile_network", "rate_encode", "bernoulli_encode",
    "ValidationError", "RangeError", "ShapeError", "CapacityError", "EventError", "DeviceUnavailable",
]
