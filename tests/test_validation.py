"""One validation policy on every backend: the same bad writes through the model, the host link
in pysim (HostLink + Chip) and the Verilator sim device raise the same MemoryMapError (field,
value, allowed range) and change nothing; the same frames sent raw (past the host's checks) are
NAKed OUT_OF_RANGE by the gateware and change nothing. INJECT frames beyond the chip's input
queue are NAKed QUEUE_FULL and the chip keeps answering."""

import numpy as np
import pytest

from neurofabric.hdl.memory_map import MEMORY_MAP, MemoryMapError, size
from neurofabric.hdl.protocol import (
    ChipRegister,
    ChipShape,
    Counter,
    LinkStatus,
    MemorySpace,
    ProfileField,
    StdpField,
)
from neurofabric.hdl.top import LinkedChip, default_chip_factory
from neurofabric.host.link import LinkBackend, LinkNak, inject_request, reset_request, write_request
from neurofabric.host.model import ModelMemoryError
from neurofabric.host.model_backend import ModelBackend
from neurofabric.host.transport import SerialTransport
from neurofabric.sim.device import DEFAULT_SHAPE, PysimTransport, SimDevice

PYSIM_SHAPE = ChipShape(cores=2, neurons=16, axons=16, lanes=8, route_entries=32)
W_MIN, W_MAX = StdpField.W_MIN.value, StdpField.W_MAX.value


def bad_writes(shape):
    """(name, space, addr, words, field): writes every backend must refuse, naming `field`."""
    return [
        ("weight 200", MemorySpace.WEIGHT, 3, [5, 200], "weight"),
        ("threshold 2**23", MemorySpace.PROFILE, MEMORY_MAP[MemorySpace.PROFILE].address(shape, ProfileField.THRESHOLD, 1),
         [1 << 23], "threshold"),
        ("reset mode 2", MemorySpace.PROFILE, ProfileField.RESET_MODE.value, [2], "reset_mode"),
        ("w_min > w_max in one write", MemorySpace.STDP, W_MIN, [5, 4], "w_min"),
        ("w_min > stored w_max", MemorySpace.STDP, W_MIN, [50], "w_min"),
        ("unknown address", MemorySpace.WEIGHT, size(MemorySpace.WEIGHT, shape), [0], "addr"),
        ("read-only register", MemorySpace.CHIP, ChipRegister.STEP.value, [7], "step"),
        ("read-only counter", MemorySpace.COUNTER, Counter.SPIKES.value, [7], "counter spikes"),
    ]


def snapshot(backend, shape):
    """What the bad writes could touch, read back."""
    return {space: backend.read(space, 0, 0, count).tolist() for space, count in [
        (MemorySpace.WEIGHT, 8), (MemorySpace.PROFILE, 16), (MemorySpace.STDP, size(MemorySpace.STDP, shape)),
        (MemorySpace.CHIP, 3)]}


def refusals(backend, shape, *, raw):
    """Drive the bad writes through `backend`; return what each raised. With `raw`, also send
    each as a raw frame past the host's checks: the chip must NAK it OUT_OF_RANGE."""
    backend.write(MemorySpace.STDP, 0, W_MIN, [-10, 20])            # the stored bounds
    backend.write(MemorySpace.WEIGHT, 0, 0, [1, -2, 3])
    before = snapshot(backend, shape)
    seen = {}
    for name, space, addr, words, field in bad_writes(shape):
        with pytest.raises(MemoryMapError) as caught:
            backend.write(space, 0, addr, words)
        error = caught.value
        assert error.field == field, (name, str(error))
        seen[name] = (error.field, error.value, error.allowed, error.space, error.addr, str(error))
        if raw:
            with pytest.raises(LinkNak) as nak:
                backend.command(*write_request(space, 0, addr, words, cores=shape.cores))
            assert nak.value.status == LinkStatus.OUT_OF_RANGE, name
        assert snapshot(backend, shape) == before, f"{name} changed the chip"
    return seen


def model_refusals(shape):
    backend = ModelBackend(shape)
    with pytest.raises(ModelMemoryError):           # the model's error is a ModelError too
        backend.write(MemorySpace.WEIGHT, 0, 0, [200])
    return refusals(backend, shape, raw=False)


def test_pysim_link_refuses_what_the_model_refuses():
    dut = LinkedChip(PYSIM_SHAPE, chip_factory=lambda shape: default_chip_factory(shape, learning=True))
    backend = LinkBackend(PysimTransport(dut, timeout_cycles=200_000))
    expected = model_refusals(PYSIM_SHAPE)
    assert refusals(backend, PYSIM_SHAPE, raw=True) == expected
    assert expected["w_min > stored w_max"][:3] == ("w_min", 50, (-128, 20))
    assert expected["threshold 2**23"][:3] == ("threshold", 1 << 23, (0, (1 << 23) - 1))


def inject_limits(backend, depth):
    """Raw INJECT frames at and just above the input queue's room: refused ones queue nothing
    and every later command is answered."""
    events = np.array([[backend._step, i % 2, i % 8] for i in range(depth + 1)])
    with pytest.raises(LinkNak) as nak:
        backend.command(*inject_request(events))
    assert nak.value.status == LinkStatus.QUEUE_FULL
    backend.command(*inject_request(events[:depth]))
    with pytest.raises(LinkNak) as nak:
        backend.command(*inject_request(events[:1]))
    assert nak.value.status == LinkStatus.QUEUE_FULL
    backend.command(*reset_request())
    backend.run(1)                                  # takes the queued events (no network: no spikes)
    backend.command(*inject_request(events[:depth]))     # room again
    backend.run(1)


def test_pysim_link_refuses_an_inject_beyond_the_queue():
    shape = ChipShape(cores=2, neurons=8, axons=8, lanes=8, route_entries=8)
    dut = LinkedChip(shape)
    backend = LinkBackend(PysimTransport(dut, timeout_cycles=200_000))
    assert backend.identify().input_queue == 64
    inject_limits(backend, 64)


@pytest.mark.verilator
def test_sim_device_refuses_what_the_model_refuses():
    """The default sim device (the learning chip): the same refusals, and an INJECT of 65
    events (one above its queue) is NAKed and the device keeps answering."""
    device = SimDevice(DEFAULT_SHAPE)
    try:
        backend = LinkBackend(SerialTransport(device.url), timeout=10.0)
        assert refusals(backend, DEFAULT_SHAPE, raw=True) == model_refusals(DEFAULT_SHAPE)
        inject_limits(backend, backend.identify().input_queue)
        backend.close()
    finally:
        device.close()
