"""The Verilator sim device (neurofabric.sim.device.SimDevice) with the LoopbackChip behind the
link: host -> TCP -> Verilated LinkedChip -> host, with and without injected link faults."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from neurofabric.hdl.memory_map import size
from neurofabric.hdl.protocol import ChipRegister, MemorySpace
from neurofabric.host.link import LinkBackend
from neurofabric.host.memory_map import random_words
from neurofabric.host.model import ChipShape
from neurofabric.host.transport import FaultInjector, SerialTransport
from neurofabric.sim.device import SimDevice, build_device

pytestmark = pytest.mark.verilator

SHAPE = ChipShape(cores=2, neurons=16, axons=24, lanes=8, route_entries=16)


@pytest.fixture(scope="module")
def executable():
    return build_device(SHAPE, chip="loopback")


class Workload:
    """Random writes/reads and inject/run rounds against the loopback chip, with the expected
    results computed here: the loopback stores 16 words per (space, core) and echoes each
    injected (step, core, axon) as a spike of that step."""

    def __init__(self, backend, rng):
        self.backend, self.rng = backend, rng
        self.memory = {}
        self.step = 0

    def memory_round(self):
        # the spaces of at least 16 writable words (the memory map refuses the others' words)
        space = self.rng.choice([s for s in MemorySpace if size(s, SHAPE) >= 16 and s != MemorySpace.COUNTER])
        core, addr = self.rng.randrange(SHAPE.cores), self.rng.randrange(16)
        count = self.rng.randrange(1, 17 - addr)
        words = random_words(self.rng, space, SHAPE, addr, count)
        self.backend.write(space, core, addr, words)
        for i, word in enumerate(words):
            self.memory[(space, core, addr + i)] = word & 0xFFFFFFFF
        first = self.rng.randrange(16)
        got = self.backend.read(space, core, first, 16 - first)
        want = [self.memory.get((space, core, a), 0) for a in range(first, 16)]
        assert [int(w) & 0xFFFFFFFF for w in got] == want

    def spike_round(self):
        steps = self.rng.randrange(1, 5)
        events = sorted((self.step + self.rng.randrange(steps), self.rng.randrange(SHAPE.cores),
                         self.rng.randrange(SHAPE.axons)) for _ in range(self.rng.randrange(0, 12)))
        self.backend.inject(np.array(events, dtype=np.int64).reshape(-1, 3))
        spikes = self.backend.run(steps)
        assert spikes.tolist() == [list(e) for e in events]
        self.step += steps

    def finish(self):
        assert self.backend.read(MemorySpace.CHIP, 0, ChipRegister.STEP.value, 1)[0] == self.step


def test_end_to_end(executable, seed):
    with SimDevice(SHAPE, executable=executable) as device:
        backend = LinkBackend(SerialTransport(device.url), timeout=2.0)
        info = backend.identify()
        assert (info.cores, info.neurons, info.axons, info.input_queue) == (2, 16, 24, 16)
        work = Workload(backend, random.Random(seed))
        for _ in range(20):
            work.memory_round()
            work.spike_round()
        work.finish()
        assert backend.stats["retries"] == 0
        backend.close()
        assert device.process.wait(5) == 0                  # exits when the client disconnects
    assert device.cycles() > 0
    assert device.clocking_seconds() > 0 and device.cpu_seconds() > 0      # printed on exit, parsed


@pytest.mark.parametrize("fault", ["flip", "drop", "insert", "all"])
def test_link_faults_are_recovered_without_double_execution(executable, fault, seed):
    """Bytes damaged both ways; every command still completes exactly once: spikes, memory and
    the chip's step count match what a fault-free run gives (a RUN or INJECT executed twice
    would add steps or spikes; a damaged frame accepted would corrupt memory)."""
    rate = 0.004
    rates = {"flip": rate, "drop": rate, "insert": rate} if fault == "all" else {fault: rate}
    with SimDevice(SHAPE, executable=executable) as device:
        faults = FaultInjector(SerialTransport(device.url), random.Random(seed), **rates)
        backend = LinkBackend(faults, timeout=0.1, retries=100)
        work = Workload(backend, random.Random(seed + 1))
        for _ in range(25):
            work.memory_round()
            work.spike_round()
        work.finish()
        print(faults.counts, backend.stats)
        assert sum(faults.counts.values()) >= 10
        assert backend.stats["retries"] > 0
        backend.close()


def test_no_orphan_when_parent_dies(executable):
    """The device dies with the process that started it (PR_SET_PDEATHSIG)."""
    code = (f"import subprocess, sys; p = subprocess.Popen([{str(executable)!r}], stdout=subprocess.PIPE); "
            "print(p.pid, flush=True); p.stdout.readline(); print('ready', flush=True); "
            "import time; time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{pid}/stat") as stat:         # reaped by init? zombie counts as gone
                if stat.read().split()[2] == "Z":
                    break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the sim device outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_real_chip_matches_model_through_the_link(seed):
    """The real chip (neurofabric.hdl.chip) in the sim device, configured and run through the
    link with the same memory words as the bit-exact model: same spikes, state and counters."""
    from neurofabric.hdl.protocol import Counter, ProfileField, RouteKind, StateField
    from neurofabric.host.model_backend import ModelBackend

    rng = np.random.default_rng(seed)
    shape = ChipShape(cores=2, neurons=16, axons=16, lanes=8, route_entries=64)
    model = ModelBackend(shape)
    with SimDevice(shape, chip="chip") as device:
        link = LinkBackend(SerialTransport(device.url), timeout=5.0)
        writes = []
        for core in range(2):
            writes.append((MemorySpace.WEIGHT, core, 0, rng.integers(-20, 60, shape.axons * shape.neurons)))
            writes.append((MemorySpace.NEURON, core, 0, rng.integers(-3, 8, shape.neurons) & 0xFFFFFF))  # profile 0
            profile = {ProfileField.DU: 1024, ProfileField.DV: 512, ProfileField.THRESHOLD: 100,
                       ProfileField.REFRACTORY: 1}
            for field, value in profile.items():
                writes.append((MemorySpace.PROFILE, core, field.value, [value]))
        # core 0 neurons -> core 1 axons (same index) and the host; core 1 neurons -> the host
        entries, pointers = [], []
        for core in range(2):
            for neuron in range(shape.neurons):
                base = len(entries)
                if core == 0:
                    entries.append(neuron | (1 << 16) | (RouteKind.AXON.value << 30))
                entries.append(RouteKind.HOST.value << 30)       # a host entry's axon and core are 0
                pointers.append(base | ((len(entries) - base) << 16))
        writes.append((MemorySpace.ROUTE_ENTRY, 0, 0, entries))
        writes.append((MemorySpace.ROUTE_POINTER, 0, 0, pointers))
        for backend in (model, link):
            for space, core, addr, words in writes:
                backend.write(space, core, addr, words)
        events = np.array(sorted((int(rng.integers(0, 12)), 0, int(rng.integers(0, 16))) for _ in range(60)))
        for backend in (model, link):
            backend.inject(events)
        spikes_model, spikes_link = model.run(15), link.run(15)
        assert len(spikes_model) > 0
        # the order of spikes inside a step is the router's arbitration: compare each step as a set
        assert sorted(spikes_link.tolist()) == sorted(spikes_model.tolist())
        assert np.all(np.diff(spikes_link[:, 0]) >= 0)
        for core in range(2):
            for space, count in ((MemorySpace.STATE, 4 * shape.neurons), (MemorySpace.WEIGHT, 32)):
                assert np.array_equal(link.read(space, core, 0, count), model.read(space, core, 0, count))
        assert link.read(MemorySpace.COUNTER, 0, Counter.STEPS.value, 1)[0] == 15
        assert link.read(MemorySpace.COUNTER, 0, Counter.SPIKES.value, 1)[0] == \
            model.read(MemorySpace.COUNTER, 0, Counter.SPIKES.value, 1)[0]
        del StateField
        link.close()


def test_chip_open_sim_shape_close_twice_and_options(executable):
    """`Chip.open("sim", shape=...)` builds that shape (IDENTIFY reports it); closing twice is
    harmless; a device that cannot start is DeviceUnavailable without pointing to "model"."""
    from neurofabric.host import Chip
    from neurofabric.host.backend import DeviceUnavailable
    chip = Chip.open("sim", shape=SHAPE, chip="loopback", executable=executable)
    assert (chip.info.cores, chip.info.neurons, chip.info.axons) == (SHAPE.cores, SHAPE.neurons, SHAPE.axons)
    process = chip.backend.device.process
    chip.close()
    chip.close()
    chip.backend.close()
    assert process.poll() is not None
    with pytest.raises(DeviceUnavailable, match="could not be started") as info:
        Chip.open("sim", shape=SHAPE, executable="/nonexistent/linked_chip")
    assert "model" not in str(info.value)
