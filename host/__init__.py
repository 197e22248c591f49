"""The neurofabric host library: describe or import a network, compile it onto the chip's
cores, load it, stream spikes in and out, control learning and read weights back, with one API
for the bit-exact model, the Verilator sim device and boards (docs/host.md)."""

from neurofabric.host.chip import Chip, DeviceUnavailable, Progress, RunResult
from neurofabric.host.compiler import CompiledNetwork, compile_network
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
    "Network", "Population", "Connection", "LIF", "IF", "STDP", "Chip", "RunResult", "Progress",
    "CompiledNetwork", "compile_network",
    "ValidationError", "RangeError", "ShapeError", "CapacityError", "EventError", "DeviceUnavailable",
]
