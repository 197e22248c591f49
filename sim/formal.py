"""Formal verification of Amaranth designs with SymbiYosys (``yowasp-sby``) and yices.

Write a *harness*: an Elaboratable that instantiates the design, drives its inputs from
free values and states properties with ``Assert``/``Assume``/``Cover``. Free values come from
:func:`free` (``AnySeq``: a new unconstrained value every cycle) and :func:`free_const`
(``AnyConst``: unconstrained but fixed for the whole trace).

Amaranth 0.5 no longer exports ``AnySeq``/``AnyConst`` from ``amaranth.hdl``; they are still
public in ``amaranth.asserts`` (importing them from there is not deprecated, unlike
``amaranth.asserts.Assert``), and the RTLIL backend lowers them to Yosys ``$anyseq`` /
``$anyconst`` cells, which sby treats as solver-chosen inputs. Do not rely on undriven inputs
instead: sby would also treat them as free, but a port left undriven by mistake is
indistinguishable from an intended one, and a proof over it says nothing; ``cover`` next to
``prove`` catches vacuous proofs (every cover must be reached).

:func:`check` puts the harness in a reset-less ``sync`` domain (the harness must not define
one): every register starts at its ``init`` value, which is the state after reset.

:func:`check` writes the RTLIL (``amaranth.back.rtlil``), an ``.sby`` file with one task per
mode, runs them and raises :class:`FormalError` with the failing task's log tail (and the
counterexample trace folder) unless every task passes.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.asserts import AnyConst, AnySeq
from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Module

from neurofabric.toolchain import formal_env

__all__ = ["FormalError", "FormalResult", "free", "free_const", "check", "sby_script"]


class FormalError(AssertionError):
    """A formal task failed (assertion violated, cover not reached, or a tool error)."""


@dataclass(frozen=True)
class FormalResult:
    """Outcome of :func:`check`: status per mode (``"PASS"``) and the work folder."""
    status: dict
    workdir: Path
    seconds: dict


def free(shape):
    """A value the solver picks anew every cycle (Yosys ``$anyseq``)."""
    return AnySeq(shape)


def free_const(shape):
    """A value the solver picks once, constant over the trace (Yosys ``$anyconst``)."""
    return AnyConst(shape)


_MODES = ("bmc", "prove", "cover")


def sby_script(il_name, top, depths, solver="yices"):
    """The .sby text: tasks `depths` keys (mode -> depth) over the RTLIL file `il_name`."""
    tasks = "\n".join(depths)
    options = "\n".join(f"{mode}: mode {mode}\n{mode}: depth {depth}" for mode, depth in depths.items())
    return (
        f"[tasks]\n{tasks}\n\n"
        f"[options]\n{options}\nmulticlock off\n\n"
        f"[engines]\nsmtbmc {solver}\n\n"
        f"[script]\nread_rtlil {il_name}\nprep -top {top}\n\n"
        f"[files]\n{il_name}\n")


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check(harness, *, name, depths=None, workdir=None, timeout=600):
    """Run sby on `harness` for each mode in `depths` (default bmc 20, prove 8, cover 20).

    `harness` is an Elaboratable with no ports (everything free is driven by :func:`free`); its
    ``sync`` domain is provided (reset-less, one global clock).
    Returns a :class:`FormalResult`; raises :class:`FormalError` unless every task passes.
    The work folder is a temporary one (removed on success) unless `workdir` is given.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name: {name!r} must be an identifier (it names files and the top module)")
    depths = dict(depths or {"bmc": 20, "prove": 8, "cover": 20})
    for mode, depth in depths.items():
        if mode not in _MODES:
            raise ValueError(f"depths: mode {mode!r} is not one of {_MODES}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depths[{mode!r}]: {depth!r} must be a positive int")
    env = {**os.environ, **formal_env()}
    keep = workdir is not None
    workdir = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix=f"neurofabric-formal-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    il_name = f"{name}.il"
    top = Module()
    top.domains.sync = sync = ClockDomain("sync", reset_less=True)
    top.submodules.harness = harness
    (workdir / il_name).write_text(rtlil.convert(top, name=name, ports=[sync.clk]))
    (workdir / f"{name}.sby").write_text(sby_script(il_name, name, depths))

    status, seconds = {}, {}
    for mode in depths:
        task_dir = workdir / f"{name}_{mode}"
        if task_dir.exists():
            shutil.rmtree(task_dir)
        start = time.monotonic()
        try:
            result = subprocess.run([env["SBY"], "-f", f"{name}.sby", mode], cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FormalError(f"formal {name} {mode}: no verdict within {timeout} s; work folder {workdir}") \
                from None
        seconds[mode] = time.monotonic() - start
        status_file = task_dir / "status"
        verdict = status_file.read_text().split()[0] if status_file.is_file() else "ERROR"
        status[mode] = verdict
        if result.returncode != 0 or verdict != "PASS":
            log = task_dir / "logfile.txt"
            raise FormalError(
                f"formal {name} {mode}: {verdict} (sby exit {result.returncode}); counterexample/trace "
                f"and logs in {task_dir}; end of log:\n{_tail(log) if log.is_file() else result.stdout[-3000:]}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return FormalResult(status=status, workdir=workdir, seconds=seconds)
