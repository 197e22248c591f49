"""The in-process backend: the bit-exact numpy model behind the :class:`Backend` interface.

``Chip.open("model")`` uses it. It applies the chip's memory map with
:meth:`ChipModel.write_words` / :meth:`ChipModel.read_words`, so host code that runs here runs
unchanged on the Verilator sim device and on boards, and gives the same spikes.
"""

import numpy as np

from neurofabric.hdl.protocol import MemorySpace
from neurofabric.host.backend import DEFAULT_SHAPE, Backend, BackendError, ChipInfo, check_options
from neurofabric.host.model import ChipModel, ChipShape
from neurofabric.host.network import ValidationError

__all__ = ["ModelBackend", "MODEL_VERSION", "DEFAULT_MODEL_SHAPE", "open_model_backend"]

MODEL_VERSION = 1
#: The shape ``Chip.open("model")`` builds when none is given: the same as "sim"'s.
DEFAULT_MODEL_SHAPE = DEFAULT_SHAPE


def open_model_backend(**options):
    """``Chip.open("model", shape=ChipShape(...))``: the registered opener of the "model" device."""
    check_options("model", options, {"shape"})
    return ModelBackend(**options)


class ModelBackend(Backend):
    """A :class:`ChipModel` behind the backend interface. `shape`: a :class:`ChipShape`
    (default :data:`DEFAULT_MODEL_SHAPE`), or pass an existing `model`."""

    def __init__(self, shape=None, model=None):
        if model is not None and shape is not None:
            raise ValidationError("give shape or model, not both", "model", model, ("None when shape is given",))
        if shape is not None and not isinstance(shape, ChipShape):
            raise ValidationError(f"shape must be a neurofabric.host.ChipShape, not {shape!r}", "shape", shape,
                                  ("ChipShape(cores=..., neurons=..., axons=..., lanes=..., ...)",))
        if model is None:
            model = ChipModel(DEFAULT_MODEL_SHAPE if shape is None else shape)
        if not isinstance(model, ChipModel):
            raise ValidationError(f"model must be a ChipModel, not {model!r}", "model", model, ("ChipModel",))
        self.model = model
        self._closed = False

    def _check_open(self):
        if self._closed:
            raise BackendError("the model backend is closed")

    def identify(self):
        self._check_open()
        s = self.model.shape
        return ChipInfo(version=MODEL_VERSION, cores=s.cores, neurons=s.neurons, axons=s.axons,
                        lanes=s.lanes, route_entries=s.route_entries, input_queue=1 << 20, build="model",
                        learning=True, encoder_channels=s.encoder_channels)

    def write(self, space, core, addr, words):
        self._check_open()
        self.model.write_words(MemorySpace(space), core, addr, np.asarray(words, dtype=np.int64).ravel())

    def read(self, space, core, addr, count):
        self._check_open()
        return np.asarray(self.model.read_words(MemorySpace(space), core, addr, count), dtype=np.int64)

    def inject(self, events):
        self._check_open()
        events = np.asarray(events, dtype=np.int64)
        if events.size == 0:
            return
        if events.ndim != 2 or events.shape[1] != 3:
            raise ValueError(f"events has shape {events.shape}, expected (E, 3) rows of (step, core, axon)")
        steps = events[:, 0]
        if np.any(np.diff(steps) < 0):
            raise ValueError("events must be in nondecreasing step order")
        if steps[0] < self.model.step_count:
            raise ValueError(f"event step {int(steps[0])} is before the chip's current step {self.model.step_count}")
        s = self.model.shape
        for name, column, hi in (("core", 1, s.cores - 1), ("axon", 2, s.axons - 1)):
            bad = (events[:, column] < 0) | (events[:, column] > hi)
            if np.any(bad):
                raise ValueError(f"event {name} {int(events[bad][0, column])} is out of range: allowed [0, {hi}]")
        # validated above: queue each step's (core, axon) rows as they are
        bounds = np.flatnonzero(np.diff(steps)) + 1
        for group in np.split(events, bounds):
            self.model._queue(int(group[0, 0]), group[:, 1:])

    def run(self, steps):
        self._check_open()
        return self.model.run_array(steps)

    def close(self):
        self._closed = True
