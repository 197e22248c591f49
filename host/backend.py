"""The one interface every chip transport implements: model, Verilator sim device, board.

A backend speaks the chip's memory map (``neurofabric.hdl.protocol.MemorySpace``) and its
run/inject/output commands. :class:`neurofabric.host.chip.Chip` is written against this class
only, so the same host code drives the numpy model, the simulation and a board.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from neurofabric.hdl.protocol import MemorySpace

__all__ = ["Backend", "ChipInfo", "BackendError"]


class BackendError(RuntimeError):
    """The chip (or the link to it) failed a command; the message says which and why."""


@dataclass(frozen=True)
class ChipInfo:
    """What a chip reports about itself (the identify reply)."""
    version: int
    cores: int
    neurons: int
    axons: int
    lanes: int
    route_entries: int
    input_queue: int            #: input events the chip can hold ahead of the running step
    build: str = ""             #: which build this is: "model", "sim", or a board name
    learning: bool = False      #: the cores learn on chip (STDP, ChipRegister.LEARNING/REWARD)
    encoder_channels: int = 0   #: input encoder channels (MemorySpace.ENCODER); 0: no encoder


class Backend(ABC):
    """Abstract chip transport. All methods validate before acting and raise
    :class:`BackendError` (or :class:`ValueError` for bad arguments) without changing state."""

    @abstractmethod
    def identify(self) -> ChipInfo:
        """The chip's version and shape."""

    @abstractmethod
    def write(self, space: MemorySpace, core: int, addr: int, words) -> None:
        """Write consecutive 32-bit words (signed fields as Python ints) starting at `addr`."""

    @abstractmethod
    def read(self, space: MemorySpace, core: int, addr: int, count: int) -> np.ndarray:
        """Read `count` consecutive words (int64, signed fields sign-extended)."""

    @abstractmethod
    def inject(self, events) -> None:
        """Queue input events: an int array of shape (E, 3) holding (step, core, axon) rows,
        in nondecreasing step order, no step before the chip's current step."""

    @abstractmethod
    def run(self, steps: int) -> np.ndarray:
        """Run `steps` time steps; return the host spikes as an int64 array (S, 3) of
        (step, core, neuron), in the order the chip emitted them."""

    @abstractmethod
    def close(self) -> None:
        """Release the transport (stop the sim device, close the port)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
