"""Build bitstreams for the boards of :data:`~neurofabric.boards.catalog.BOARDS` and program them.

Command line (``neurofabric <command>`` wires these in; ``main(argv)`` takes the same words)::

    build --board NAME [--cores N] [--neurons N] [--axons N] [--lanes P] [--route-entries N]
          [--clock-mhz F] [--baud B] [--chip neuro|loopback] [--out DIR] [--no-cache]
          [--allow-timing-fail]
    program --board NAME [--out DIR | --bitstream FILE] [--flash]
    list

``build`` validates every option first (a bad one is reported with its allowed range and
nothing is built), elaborates :class:`~neurofabric.boards.top.BoardTop`, and runs Yosys,
nextpnr and icepack/ecppack from the YoWASP wheels (environment from
``neurofabric.toolchain.yowasp_env``), printing each stage. Builds are cached by content
(every generated file, the tool versions and the options) under ``$NEUROFABRIC_CACHE/bitstream``;
the bitstream, ``summary.json`` (configuration, fmax, utilisation), ``timing.txt``,
``utilisation.txt`` and the tool logs are copied to the build folder (``--out``, default
``build/<board>``). If the achieved clock is below the target, ``build`` says so and fails (exit
status 1) unless ``--allow-timing-fail``. Boards whose vendor tools are not pip-installable
(``Board.buildable`` false) get their build tree written only.

``program`` loads the bitstream with ``openFPGALoader`` (to SRAM, or to flash with ``--flash``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from neurofabric.boards.catalog import BOARDS, BoardConfigError, BuildConfig, check_config, get_board
from neurofabric.boards.synth import COLLISION_FREE_SCRIPT, cell_counts
from neurofabric.toolchain import (
    ToolchainError,
    cache_key,
    cached_build,
    stage_progress,
    tool_versions,
    yowasp_env,
)

__all__ = ["BOARDS", "BuildResult", "BuildError", "TimingError", "build_bitstream", "program_board",
           "main", "default_out_dir", "design_hash"]

#: Seconds between progress checks of a running build.
_POLL = 0.5
_NAME = "top"


class BuildError(RuntimeError):
    """A tool of the build failed; the message carries the end of its log. ``design_hash`` is
    the failed design's content hash (when the build ran through the cache)."""

    design_hash = None


class TimingError(BuildError):
    """The design does not meet the target clock. ``result`` holds the build's figures."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class BuildResult:
    """Figures of one build (``fmax_mhz`` is None for a build tree without a toolchain run)."""
    config: BuildConfig
    folder: Path                #: the build folder (a copy of the outputs)
    bitstream: Path | None
    fmax_mhz: float | None
    target_mhz: float
    utilisation: dict           #: resource -> {"used": n, "available": n} (nextpnr's counts)
    cells: dict                 #: lut4, ff, carry, bram, spram, dsp (Yosys's counts after synthesis)
    seconds: float
    cached: bool
    chip: str = "neuro"         #: "neuro", or the class name of a stand-in chip
    design_hash: str | None = None  #: the build's content hash (its cache key), 16 hex digits

    @property
    def timing_met(self):
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    def summary(self):
        return {
            **self.config.summary(), "chip": self.chip,
            "fmax_mhz": None if self.fmax_mhz is None else round(self.fmax_mhz, 2),
            "target_mhz": round(self.target_mhz, 4), "timing_met": self.timing_met,
            "utilisation": self.utilisation, "cells": self.cells,
            "bitstream": None if self.bitstream is None else self.bitstream.name,
            "build_seconds": round(self.seconds, 1), "cached": self.cached,
            "design_hash": self.design_hash,
        }


def default_out_dir(board_name):
    return Path("build") / board_name


#: Yosys commands run after reading the design, per family. Amaranth gives every memory an
#: initial value (zeros for ``init=[]``) and Yosys maps no initialised memory to iCE40 SPRAM
#: (which cannot be initialised): the cores' weight memories drop theirs, and are marked
#: ``ram_style = "huge"`` so that ``-spram`` puts them in SPRAM even where block RAM would be
#: cheaper by Yosys's measure (block RAM is the UP5K's scarce memory). Their contents are
#: undefined at power-up until the host writes the weights. Each core's spike FIFO goes to a
#: block RAM (Yosys would build its 16 entries from about 160 logic cells). On both families the
#: read ports of :data:`~neurofabric.boards.synth.COLLISION_FREE_MEMORIES` get an undefined
#: read-during-write result.
_AFTER_READ = {
    "ice40": "delete t:$meminit_v2 r:MEMID=\\weight_mem %i\n"
             "setattr -set ram_style \"huge\" m:weight_mem\n"
             "setattr -set ram_style \"block\" *.spike_fifo/m:storage\n"
             + COLLISION_FREE_SCRIPT,
    "ecp5": COLLISION_FREE_SCRIPT,
}


def _overrides(board):
    if board.family == "ice40":
        synth = "-dsp -spram"
    else:
        synth = ""
    overrides = dict(
        synth_opts=synth,
        script_after_synth="tee -q -o stat.json stat -json",
        nextpnr_opts="--report report.json --timing-allow-fail --seed 1",
    )
    # only where needed: the other families' scripts (and so their cache keys) stay as they were
    if board.family in _AFTER_READ:
        overrides["script_after_read"] = _AFTER_READ[board.family]
    return overrides


def _plan(config, chip_factory=None):
    from neurofabric.boards.top import BoardTop
    platform = config.board.platform()
    top = BoardTop(config, chip_factory=chip_factory)
    return platform.build(top, name=_NAME, do_build=False, **_overrides(config.board))


def _design_key(plan, config):
    files = {name: (content if isinstance(content, bytes) else content.encode())
             for name, content in sorted(plan.files.items())}
    return cache_key("bitstream", files, config.summary(), tool_versions())


def design_hash(config, chip_factory=None):
    """The content hash (16 hex digits) a build of `config` would have: its cache key."""
    return _design_key(_plan(config, chip_factory), config)[:16]


def _tail(path, lines=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_STAGES = (
    ("yosys", lambda folder: True),
    ("nextpnr", lambda folder: (folder / f"{_NAME}.json").is_file()),
    ("pack", lambda folder: (folder / f"{_NAME}.asc").is_file() or (folder / f"{_NAME}.config").is_file()),
)


def _run_script(folder, env, say, label):
    """Run the generated build script in `folder`, reporting each stage as it starts."""
    log = folder / "build.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["sh", f"build_{_NAME}.sh"], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        reported = -1
        try:
            while process.poll() is None:
                stage = max(i for i, (_, reached) in enumerate(_STAGES) if reached(folder))
                if stage != reported:
                    say(f"{label}: {_STAGES[stage][0]} ({time.monotonic() - start:.0f} s)")
                    reported = stage
                time.sleep(_POLL)
        except BaseException:
            process.kill()
            process.wait()
            raise
    if process.returncode != 0:
        stage = _STAGES[max(i for i, (_, reached) in enumerate(_STAGES) if reached(folder))][0]
        tool_log = {"yosys": f"{_NAME}.rpt", "nextpnr": f"{_NAME}.tim"}.get(stage, "build.log")
        raise BuildError(f"{label}: {stage} failed (exit {process.returncode}); end of "
                         f"{folder / tool_log}:\n{_tail(folder / tool_log)}\n{_tail(log, 10)}")
    say(f"{label}: done ({time.monotonic() - start:.0f} s)")


def _parse(folder, config):
    report = json.loads((folder / "report.json").read_text())
    clocks = report.get("fmax", {})
    if not clocks:
        raise BuildError(f"nextpnr's report {folder / 'report.json'} has no clock: was the design "
                         f"optimised away?")
    # the PLL output is the net `clk` (BoardTop.clk; nextpnr-ecp5 calls it `$glbnet$clk` once it
    # is on the global network); without it, the slowest clock counts
    sync = [entry for name, entry in clocks.items() if name == "clk" or name.endswith("$clk")]
    fmax = min(float(entry["achieved"]) for entry in (sync or clocks.values()))
    utilisation = {name: {"used": int(v["used"]), "available": int(v["available"])}
                   for name, v in report.get("utilization", {}).items() if int(v["used"])}
    counts = cell_counts(folder / "stat.json", config.board.family)
    return fmax, clocks, utilisation, counts


def _write_summaries(out, result, clocks):
    summary = result.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"target {result.target_mhz:.3f} MHz"]
    for name, entry in clocks.items():
        lines.append(f"clock {name}: achieved {float(entry['achieved']):.2f} MHz, "
                     f"constraint {float(entry['constraint']):.2f} MHz")
    lines.append("timing " + ("met" if result.timing_met else "NOT met"))
    (out / "timing.txt").write_text("\n".join(lines) + "\n")
    (out / "utilisation.txt").write_text(
        "".join(f"{name:<20} {v['used']:>7} / {v['available']:<7} ({100 * v['used'] / max(1, v['available']):.1f}%)\n"
                for name, v in result.utilisation.items()))


def build_bitstream(config, *, out=None, progress=None, use_cache=True, allow_timing_fail=False,
                    chip_factory=None):
    """Build `config` (a :class:`BuildConfig`); return a :class:`BuildResult`.

    Raises :class:`TimingError` if the achieved clock is below the target (unless
    `allow_timing_fail`), :class:`BuildError` if a tool fails, ``ToolchainError`` if a YoWASP
    wheel is missing. `progress` is called with one-line messages.
    """
    say = progress or (lambda message: None)
    chip_name = "neuro" if chip_factory is None else getattr(chip_factory, "__name__", "custom")
    board = config.board
    out = Path(out) if out is not None else default_out_dir(board.name)
    label = f"{board.name} {config.shape.cores}x{config.shape.neurons}n/{config.shape.axons}a/" \
            f"P{config.shape.lanes} @ {config.f_clk_mhz:g} MHz"
    start = time.monotonic()
    say(f"{label}: elaborating")
    plan = _plan(config, chip_factory)

    if not board.buildable:
        if out.exists():
            shutil.rmtree(out)
        plan.extract(str(out))
        (out / "summary.json").write_text(json.dumps(config.summary(), indent=2) + "\n")
        say(f"{label}: build tree written to {out} (its toolchain is not pip-installable: run "
            f"build_{_NAME}.sh there with the vendor tools)")
        return BuildResult(config=config, folder=out, bitstream=None, fmax_mhz=None,
                           target_mhz=config.f_clk_mhz, utilisation={}, cells={},
                           seconds=time.monotonic() - start, cached=False, chip=chip_name)

    env = {**os.environ, **yowasp_env((board.family,))}

    def run(folder):
        plan.extract(str(folder))
        _run_script(folder, env, say, label)

    ran = []
    key = _design_key(plan, config)
    if use_cache:
        try:
            folder = cached_build("bitstream", key, lambda f: (ran.append(1), run(f)))
        except BuildError as error:
            error.design_hash = key[:16]
            raise
    else:
        folder = out / "work"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        run(folder)
        ran.append(1)
    cached = not ran
    if cached:
        say(f"{label}: cached ({folder})")

    fmax, clocks, utilisation, cells = _parse(folder, config)
    bitstream_name = f"{_NAME}.bin" if board.family == "ice40" else f"{_NAME}.bit"
    out.mkdir(parents=True, exist_ok=True)
    for name in (bitstream_name, "report.json", "stat.json", f"{_NAME}.tim", f"{_NAME}.rpt", "build.log"):
        if (folder / name).is_file() and (folder / name).resolve() != (out / name).resolve():
            shutil.copyfile(folder / name, out / name)
    result = BuildResult(config=config, folder=out, bitstream=out / bitstream_name, fmax_mhz=fmax,
                         target_mhz=config.f_clk_mhz, utilisation=utilisation, cells=cells,
                         seconds=time.monotonic() - start, cached=cached, chip=chip_name,
                         design_hash=key[:16])
    _write_summaries(out, result, clocks)
    if not result.timing_met and not allow_timing_fail:
        raise TimingError(
            f"{label}: timing NOT met: the design reaches {fmax:.2f} MHz but the clock is "
            f"{config.f_clk_mhz:g} MHz. Lower --clock-mhz (to at most {fmax:.1f}) or the chip size; "
            f"figures in {out / 'timing.txt'} (the bitstream would not work reliably)", result)
    say(f"{label}: fmax {fmax:.2f} MHz (target {config.f_clk_mhz:g}), bitstream {result.bitstream}")
    return result


def program_board(board, bitstream, *, flash=False, runner=subprocess.run):
    """Load `bitstream` onto `board` with openFPGALoader; returns its exit status."""
    tool = shutil.which("openFPGALoader")
    if tool is None:
        raise ToolchainError("openFPGALoader not found on PATH: install it (e.g. `apt-get install "
                             "openfpgaloader`, or from https://github.com/trabucayre/openFPGALoader) "
                             "to program boards")
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise FileNotFoundError(f"bitstream {bitstream} does not exist: run `build --board {board.name}` first")
    cmd = [tool, *board.openfpgaloader, *(["-f"] if flash else []), str(bitstream)]
    return runner(cmd).returncode


# --- command line -------------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="neurofabric", description="Build and program neurofabric bitstreams.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a bitstream for a board")
    build.add_argument("--board", required=True, help="board name (see `neurofabric boards`)")
    for option, meta in (("cores", "N"), ("neurons", "N"), ("axons", "N"), ("lanes", "P"),
                         ("route-entries", "N"), ("baud", "B")):
        build.add_argument(f"--{option}", type=int, metavar=meta, help="default: the board's")
    build.add_argument("--clock-mhz", type=float, metavar="F", help="target clock (default: the board's)")
    build.add_argument("--out", type=Path, metavar="DIR", help="build folder (default: build/<board>)")
    build.add_argument("--chip", choices=("neuro", "loopback"), default="neuro",
                       help="neuro: the neuromorphic chip (default); loopback: the host link around a "
                            "memory-and-loopback stand-in (link bring-up where the chip does not fit)")
    build.add_argument("--no-cache", action="store_true", help="rebuild even if a cached build exists")
    build.add_argument("--allow-timing-fail", action="store_true",
                       help="keep the bitstream even if the target clock is not met")
    program = commands.add_parser("program", help="load a bitstream with openFPGALoader")
    program.add_argument("--board", required=True)
    program.add_argument("--out", type=Path, metavar="DIR", help="build folder (default: build/<board>)")
    program.add_argument("--bitstream", type=Path, metavar="FILE", help="default: the build folder's")
    program.add_argument("--flash", action="store_true", help="write the configuration flash")
    commands.add_parser("list", help="list the boards")
    return parser


def _list(stream):
    for board in BOARDS.values():
        d = board.default
        flow = "yowasp" if board.buildable else "build tree only"
        stream.write(f"{board.name:<18} {board.description}  [{flow}; default {d.cores} cores x "
                     f"{d.neurons} neurons, {d.axons} axons, {d.lanes} lanes @ {board.default_clock_mhz:g} MHz, "
                     f"{board.baud} baud]\n")


def main(argv=None):
    """Run a command (``build``, ``program``, ``list``); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    with stage_progress() as say:       # each stage on its own line, with its elapsed time
        return _command(args, say)


def _command(args, say):
    """Run the parsed command; `say` reports each stage of a build."""
    try:
        if args.command == "list":
            _list(sys.stdout)
            return 0
        board = get_board(args.board)
        if args.command == "build":
            config = check_config(board, cores=args.cores, neurons=args.neurons, axons=args.axons,
                                  lanes=args.lanes, route_entries=args.route_entries,
                                  clock_mhz=args.clock_mhz, baud=args.baud)
            chip_factory = None
            if args.chip == "loopback":
                from neurofabric.hdl.link_testchip import LoopbackChip
                chip_factory = LoopbackChip
            result = build_bitstream(config, out=args.out, progress=say, use_cache=not args.no_cache,
                                     allow_timing_fail=args.allow_timing_fail, chip_factory=chip_factory)
            print(json.dumps(result.summary(), indent=2))
            return 0
        if args.command == "program":
            bitstream = args.bitstream or (args.out or default_out_dir(board.name)) / (
                f"{_NAME}.bin" if board.family == "ice40" else f"{_NAME}.bit")
            return program_board(board, bitstream, flash=args.flash)
    except (BoardConfigError, TimingError, BuildError, ToolchainError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, BoardConfigError) else 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
