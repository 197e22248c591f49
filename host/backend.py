"""The one interface every chip transport implements: model, Verilator sim device, board.

A backend speaks the chip's memory map (``neurofabric.hdl.protocol.MemorySpace``) and its
run/inject/output commands. :class:`neurofabric.host.chip.Chip` is written against this class
only, so the same host code drives the numpy model, the simulation and a board.
"""

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from neurofabric.hdl.protocol import ChipShape, MemorySpace
from neurofabric.host.network import ValidationError

__all__ = ["Backend", "ChipInfo", "BackendError", "DeviceUnavailable", "DEFAULT_SHAPE", "BACKEND_GROUP",
           "backend_names", "open_named_backend", "check_options"]

#: The shape ``Chip.open("model")`` and ``Chip.open("sim")`` build when none is given: two cores
#: of 128 neurons and 128 axons, 8 lanes, and a 64-channel input encoder. Every example in the
#: README and docs/ fits it; the sim device builds it in about a minute, once.
DEFAULT_SHAPE = ChipShape(cores=2, neurons=128, axons=128, lanes=8, route_entries=512, encoder_channels=64)

#: The entry-point group named devices are found in (``pyproject.toml``): each entry is a
#: callable ``open(**options) -> Backend``. "model" is ``neurofabric.host.model_backend``,
#: "sim" is ``neurofabric.sim.device``: the host library never imports the simulation package.
BACKEND_GROUP = "neurofabric.backends"
#: Named devices that do not depend on the installed metadata (the host library's own).
_BUILTIN = {"model": "neurofabric.host.model_backend:open_model_backend"}


class BackendError(RuntimeError):
    """The chip (or the link to it) failed a command; the message says which and why."""


class DeviceUnavailable(BackendError):
    """The requested device cannot be opened here: an unknown name or URL, a missing component,
    a serial port that does not exist, or a chip that does not answer (the message says which)."""


def _registry():
    names = dict(_BUILTIN)
    for entry in importlib.metadata.entry_points(group=BACKEND_GROUP):
        names.setdefault(entry.name, entry.value)
    return names


def backend_names():
    """The named devices :meth:`Chip.open` knows (besides ``serial://`` and ``socket://`` URLs)."""
    return tuple(sorted(_registry()))


def open_named_backend(name, **options):
    """Open the named device `name` through its registered opener; DeviceUnavailable if the name
    is not registered or its package cannot be imported."""
    target = _registry().get(name)
    if target is None:
        raise DeviceUnavailable(f"unknown device {name!r}: allowed {', '.join(map(repr, backend_names()))}, "
                                "'serial://PORT' or 'socket://HOST:PORT'")
    module, _, attr = target.partition(":")
    try:
        opener = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise DeviceUnavailable(f"device {name!r} needs {target}, which cannot be imported here ({e}); "
                                "install the package that provides it (e.g. pip install -e '.[sim]')") from e
    return opener(**options)


def check_options(device, options, allowed):
    """Raise ValidationError naming the first option of `options` not in `allowed`."""
    for key in options:
        if key not in allowed:
            raise ValidationError(f"Chip.open({device!r}): unknown option {key!r}: allowed "
                                  f"{', '.join(sorted(allowed))}", key, options[key], tuple(sorted(allowed)))


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
