"""Out-of-context synthesis of any component with the pip-installed open toolchain.

:func:`synthesize` wraps a ``wiring.Component`` in a pin-lean harness (:class:`SynthHarness`)
so that it fits a small package whatever its port count, runs YoWASP Yosys (``synth_ice40`` /
``synth_ecp5`` with ``-abc9``) and YoWASP nextpnr (placement and routing with ``--report``),
and returns the achieved clock frequency and the resource use as a :class:`SynthResult`.

The harness has three pins (``clk``, ``sdi``, ``sdo``):

* every input port bit of the component, plus its synchronous reset, is a flip-flop of one
  serial shift chain fed by ``sdi``;
* every output port bit is registered, and the registers are folded into a multiple-input
  signature register (one 2-input XOR per bit, rotated every cycle) whose last bit drives
  ``sdo``: every output bit is observable, so nothing is optimised away, and no path through
  the harness is deeper than one LUT.

All paths to and from the component start and end at harness flip-flops, so the reported
Fmax is the core's, not the IO's. The counts in :class:`SynthResult` include the harness:
``harness_ff`` flip-flops (and about ``harness_lut4`` LUTs) are its own.

Results are cached by content (RTLIL without source locations, tool versions, arguments)
under ``$NEUROFABRIC_CACHE/synth``. The first YoWASP call on a machine compiles WebAssembly
(30-100 s); later calls start quickly.
"""

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow

from neurofabric.toolchain import cache_key, cached_build, tool_versions, yowasp_env

__all__ = ["SynthResult", "SynthError", "SynthHarness", "synthesize", "ECP5_DEVICES", "ICE40_DEVICES",
           "COLLISION_FREE_MEMORIES", "COLLISION_FREE_SCRIPT"]

#: nextpnr-ice40 device flags by device name.
ICE40_DEVICES = {"up5k": "--up5k", "u4k": "--u4k", "hx1k": "--hx1k", "hx8k": "--hx8k",
                 "lp1k": "--lp1k", "lp8k": "--lp8k", "up3k": "--up3k", "u1k": "--u1k"}
#: nextpnr-ecp5 device flags by Lattice part name.
ECP5_DEVICES = {"LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
                "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
                "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k"}

# Cell names counted per family (from Yosys's `stat` after synthesis).
_CELLS = {
    "ice40": {
        "lut4": ("SB_LUT4",),
        "ff_prefix": "SB_DFF",
        "carry": ("SB_CARRY",),
        "bram": ("SB_RAM40_4K", "SB_RAM40_4KNR", "SB_RAM40_4KNW", "SB_RAM40_4KNRNW"),
        "spram": ("SB_SPRAM256KA",),
        "dsp": ("SB_MAC16",),
    },
    "ecp5": {
        "lut4": ("LUT4",),
        "ff_prefix": "TRELLIS_FF",
        "carry": ("CCU2C",),
        "bram": ("DP16KD", "PDPW16KD"),
        "spram": (),
        "dsp": ("MULT18X18D", "ALU54B"),
    },
}


class SynthError(RuntimeError):
    """Yosys or nextpnr failed; the message carries the end of the tool's log."""


@dataclass(frozen=True)
class SynthResult:
    """Achieved clock and resource use of one synthesis run (counts include the harness).

    ``carry``: iCE40 ``SB_CARRY`` cells (one per bit) or ECP5 ``CCU2C`` cells (two bits each).
    ``bram``: iCE40 ``SB_RAM40_4K`` or ECP5 ``DP16KD``/``PDPW16KD``; ``spram``: iCE40 SPRAM;
    ``dsp``: iCE40 ``SB_MAC16`` or ECP5 ``MULT18X18D``/``ALU54B``.
    """
    name: str
    family: str
    device: str
    package: str
    fmax_mhz: float
    target_mhz: float
    lut4: int
    ff: int
    bram: int
    spram: int
    dsp: int
    carry: int
    harness_ff: int
    harness_lut4: int
    report_path: Path        #: nextpnr's JSON report (fmax, utilisation)
    stat_path: Path          #: Yosys's `stat -json` after synthesis
    yosys_log_path: Path
    nextpnr_log_path: Path

    @property
    def meets_target(self):
        return self.fmax_mhz >= self.target_mhz


def _ports(component):
    """(inputs, outputs): lists of (name, Value) of a component's flattened signature."""
    if not isinstance(component, wiring.Component):
        raise TypeError(f"component: expected a wiring.Component, got {component!r}")
    inputs, outputs = [], []
    for path, member, value in component.signature.flatten(component):
        name = "__".join(map(str, path))
        (inputs if member.flow == Flow.In else outputs).append((name, Value.cast(value)))
    return inputs, outputs


class SynthHarness(Elaboratable):
    """Pin-lean wrapper for out-of-context synthesis; see the module docstring.

    Ports: ``clk`` (the component's ``sync`` clock), ``sdi`` (shift-chain input), ``sdo``
    (signature output). The component's ``sync`` reset is the first bit of the shift chain.
    """

    def __init__(self, component):
        self.component = component
        self.inputs, self.outputs = _ports(component)
        self.in_bits = sum(len(v) for _, v in self.inputs)
        self.out_bits = sum(len(v) for _, v in self.outputs)
        if self.out_bits == 0:
            raise ValueError("component: it has no output ports, so synthesis would remove all of it")
        self.clk = Signal()
        self.sdi = Signal()
        self.sdo = Signal()
        #: Flip-flops that belong to the harness, not to the component.
        self.ff = 1 + self.in_bits + 2 * self.out_bits
        #: LUT4s the harness adds (one XOR per signature bit).
        self.lut4 = self.out_bits

    def elaborate(self, platform):
        m = Module()
        m.domains.harness = harness = ClockDomain("harness", reset_less=True)
        m.domains.sync = sync = ClockDomain("sync")
        m.d.comb += [harness.clk.eq(self.clk), sync.clk.eq(self.clk)]
        m.submodules.core = self.component

        chain = Signal(1 + self.in_bits)
        m.d.harness += chain.eq(Cat(self.sdi, chain[:-1]))
        m.d.comb += sync.rst.eq(chain[0])
        offset = 1
        for _name, value in self.inputs:
            m.d.comb += value.eq(chain[offset:offset + len(value)])
            offset += len(value)

        captured = Signal(self.out_bits)
        m.d.harness += captured.eq(Cat(*(value for _name, value in self.outputs)))
        signature = Signal(self.out_bits)
        m.d.harness += signature.eq(Cat(signature[-1], signature[:-1]) ^ captured)
        m.d.comb += self.sdo.eq(signature[-1])
        return m


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(cmd, cwd, log, env, what, timeout):
    with open(log, "w") as out:
        out.write(" ".join(map(str, cmd)) + "\n")
        out.flush()
        try:
            result = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SynthError(f"{what} did not finish within {timeout} s; end of its log:\n{_tail(log)}") from None
    if result.returncode != 0:
        raise SynthError(f"{what} failed (exit {result.returncode}); end of its log:\n{_tail(log)}")


def _check_args(family, device, package, clock_mhz, name):
    if family not in ("ice40", "ecp5"):
        raise ValueError(f"family: {family!r} is not one of 'ice40', 'ecp5'")
    devices = ICE40_DEVICES if family == "ice40" else ECP5_DEVICES
    if device not in devices:
        raise ValueError(f"device: {device!r} is not a known {family} device; one of {sorted(devices)}")
    if not isinstance(package, str) or not package:
        raise ValueError(f"package: {package!r} must be a package name such as 'sg48' or 'CABGA381'")
    if not isinstance(clock_mhz, (int, float)) or not 0 < clock_mhz <= 1000:
        raise ValueError(f"clock_mhz: {clock_mhz!r} must be a number in (0, 1000]")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: {name!r} must be an identifier (it names the build files)")
    return devices[device]


#: Memories (by name) whose read data is never used in a cycle in which the same word is written
#: through their write port. Amaranth's read ports without transparency promise the old data on
#: such a collision, which iCE40 block RAM does not guarantee, so Yosys emulates it in logic (a
#: register for the write data and the address, a comparator and a multiplexer per read port:
#: about 1000 logic cells for the whole chip on iCE40; on ECP5 the multiplexer sits between a
#: block RAM's output and the core's sweep, 3.5 MHz of a 256 x 256 core's clock). Board builds
#: and :func:`synthesize` declare the collision result undefined for these memories instead:
#:
#: * ``storage``: every ``amaranth.lib.fifo.SyncFIFOBuffered`` (it reads a word only while the
#:   FIFO holds it, and then does not write it);
#: * the core's accumulator banks (a word read while written is either overridden by the
#:   integration's forwarding or not used), neuron, state and profile memories (written by the
#:   sweep's last stage, which is never at the neuron its first stage reads, or by a request,
#:   whose read data a write does not use);
#: * the router's route table (written only between steps, when no spike is being routed; the
#:   host's read of the table and a write are never in the same cycle).
COLLISION_FREE_MEMORIES = (
    "storage", "acc_bank0", "acc_bank1", "neuron_mem", "state_mem",
    "profile_decay_mem", "profile_threshold_mem", "profile_reset_mem",
    "route_pointer", "route_entry",
)


def _select_memories(cell_type, names):
    """A Yosys selection of the `cell_type` cells of the memories named `names`."""
    pattern = " ".join(f"r:MEMID=\\{name}" for name in names) + " %u" * (len(names) - 1)
    return f"t:{cell_type} {pattern} %i"


#: The Yosys command (run after reading the design) that declares :data:`COLLISION_FREE_MEMORIES`.
COLLISION_FREE_SCRIPT = "setparam -set COLLISION_X_MASK 1 " + _select_memories("$memrd_v2", COLLISION_FREE_MEMORIES)


def synthesize(component, *, family, device, package, clock_mhz, name, build_dir=None, progress=None,
               synth_opts="", after_read=""):
    """Synthesise, place and route `component` in :class:`SynthHarness`; return a :class:`SynthResult`.

    Parameters
    ----------
    component : wiring.Component
        Any component whose clocked logic is in the ``sync`` domain.
    family : "ice40" | "ecp5"
    device : str
        ``"up5k"`` etc. for iCE40, ``"LFE5U-85F"`` etc. for ECP5.
    package : str
        ``"sg48"`` (iCEBreaker UP5K), ``"CABGA381"`` (ULX3S ECP5-85F), ...
    clock_mhz : float
        Target clock handed to nextpnr (``--freq``); the result says whether it was met.
    name : str
        Names the build files.
    build_dir : Path, optional
        Build in ``build_dir/name`` (always rebuilt) instead of the content-addressed cache.
    progress : callable, optional
        Called with a short message at each stage (``"yosys"``, ``"nextpnr"``, ``"cached"``).
    synth_opts : str
        Extra options of ``synth_ice40`` / ``synth_ecp5`` (e.g. ``"-dsp -spram"``).
    after_read : str
        Yosys commands run after reading the design (before :data:`COLLISION_FREE_SCRIPT`).
    """
    device_flag = _check_args(family, device, package, clock_mhz, name)
    _ports(component)   # raises on a non-component before a harness exists
    harness = SynthHarness(component)
    il_text = rtlil.convert(harness, name="top", ports=[harness.clk, harness.sdi, harness.sdo], emit_src=False)
    synth_cmd = "synth_ice40" if family == "ice40" else "synth_ecp5"
    yosys_script = (
        "read_rtlil top.il\n"
        "chformal -remove\n"           # Asserts in the gateware are for simulation and formal only
        + (f"{after_read.rstrip()}\n" if after_read else "")
        + f"{COLLISION_FREE_SCRIPT}\n"
        f"{synth_cmd} -abc9 {synth_opts + ' ' if synth_opts else ''}-top top -json top.json\n"
        "tee -q -o stat.json stat -json\n")
    nextpnr_args = [device_flag, "--package", package, "--json", "top.json", "--freq", f"{clock_mhz:g}",
                    "--report", "report.json", "--seed", "1", "--timing-allow-fail"]
    nextpnr_args.append("--pcf-allow-unconstrained" if family == "ice40" else "--lpf-allow-unconstrained")
    env = {**os.environ, **yowasp_env((family,))}
    nextpnr = env["NEXTPNR_ICE40"] if family == "ice40" else env["NEXTPNR_ECP5"]

    def say(message):
        if progress is not None:
            progress(message)

    def build(folder):
        (folder / "top.il").write_text(il_text)
        (folder / "synth.ys").write_text(yosys_script)
        say(f"{name}: yosys {synth_cmd}")
        _run([env["YOSYS"], "-q", "-l", "yosys.log", "-s", "synth.ys"], folder, folder / "yosys.out", env,
             f"yosys ({synth_cmd}) for {name}", timeout=3600)
        say(f"{name}: nextpnr-{family} {device} {package} @ {clock_mhz:g} MHz")
        _run([nextpnr, *nextpnr_args], folder, folder / "nextpnr.log", env,
             f"nextpnr-{family} for {name}", timeout=3600)
        if not (folder / "report.json").is_file():
            raise SynthError(f"nextpnr-{family} for {name} wrote no report.json")

    start = time.monotonic()
    if build_dir is not None:
        folder = Path(build_dir) / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        build(folder)
    else:
        key = cache_key("synth", il_text.encode(), yosys_script, nextpnr_args, tool_versions())
        folder = cached_build("synth", key, build)
        if time.monotonic() - start < 1:
            say(f"{name}: cached")
    return _parse(folder, name, family, device, package, clock_mhz, harness)


def cell_counts(stat_path, family):
    """Yosys's cell counts (``stat -json`` output at `stat_path`, flattened or per module) by
    kind for `family`: lut4, carry, bram, spram, dsp and ff."""
    stat = json.loads(Path(stat_path).read_text())
    cells = dict(stat.get("design", {}).get("num_cells_by_type", {}))
    if not cells:
        for module in stat.get("modules", {}).values():
            for cell, count in module.get("num_cells_by_type", {}).items():
                cells[cell] = cells.get(cell, 0) + count
    kinds = _CELLS[family]
    counts = {key: sum(int(cells.get(t, 0)) for t in kinds[key]) for key in ("lut4", "carry", "bram", "spram", "dsp")}
    counts["ff"] = sum(int(n) for t, n in cells.items() if t.startswith(kinds["ff_prefix"]))
    return counts


def _parse(folder, name, family, device, package, clock_mhz, harness):
    report = json.loads((folder / "report.json").read_text())
    clocks = report.get("fmax", {})
    if not clocks:
        raise SynthError(f"nextpnr report {folder / 'report.json'} has no clock: the design has no "
                         f"clocked logic left (was everything optimised away?)")
    fmax = min(entry["achieved"] for entry in clocks.values())

    counts = cell_counts(folder / "stat.json", family)
    return SynthResult(
        name=name, family=family, device=device, package=package,
        fmax_mhz=float(fmax), target_mhz=float(clock_mhz),
        lut4=counts["lut4"], ff=counts["ff"], bram=counts["bram"], spram=counts["spram"], dsp=counts["dsp"],
        carry=counts["carry"],
        harness_ff=harness.ff, harness_lut4=harness.lut4,
        report_path=folder / "report.json", stat_path=folder / "stat.json",
        yosys_log_path=folder / "yosys.log", nextpnr_log_path=folder / "nextpnr.log",
    )
