"""Per board: the largest chip configuration that fits and meets timing, found by real builds.

For every buildable board (``neurofabric.boards.catalog.BOARDS``) this tries the board's
candidate configurations from the largest down (cores x neurons x axons x lanes at a target
clock) with the full flow of ``neurofabric.boards.build`` (YoWASP Yosys + nextpnr + pack),
and records every attempt: fits or not, fmax, target clock, utilisation (LUT4, FF, BRAM,
SPRAM, DSP). The first candidate that fits and meets timing is the board's result. A candidate
that fits but misses timing is retried once at the highest clock below its fmax that the PLL
and the UART can make. For the iCE40 boards it also builds the board top around the host link
with a loopback stand-in chip (``--chip loopback``), the link-only figure.

Builds are cached by content, so a second run only repeats what changed (failed builds are
remembered by design hash in ``<out>/failures.json``). A large ECP5 build takes 15-40 minutes on
two shared cores; ``--collect DIR...`` records finished ``neurofabric build`` folders instead of
building (``--update`` merges into an existing ``--json`` file).

    python bench/boards.py --json build/bench/boards.json [--boards icebreaker,ulx3s-85f] [--update]
    python bench/boards.py --json build/bench/boards.json --update --collect build/ulx3s ...
"""

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

from neurofabric.boards.build import BOARDS, BuildError, build_bitstream, design_hash
from neurofabric.boards.catalog import BoardConfigError, check_config
from neurofabric.hdl.link_testchip import LoopbackChip

#: Candidates per board, largest first: (cores, neurons, axons, lanes, clock MHz).
CANDIDATES = {
    "icebreaker": [(1, 256, 256, 2, 24), (1, 256, 256, 1, 24), (1, 64, 64, 1, 24), (1, 16, 16, 1, 24)],
    "upduino3": [(1, 256, 256, 1, 24), (1, 128, 128, 1, 24), (1, 16, 16, 1, 24)],
    "ulx3s-85f": [(6, 256, 256, 8, 50), (5, 256, 256, 8, 50), (4, 256, 256, 8, 50), (2, 256, 256, 8, 50)],
    "colorlight-5a75b": [(4, 128, 128, 8, 50), (3, 128, 128, 8, 50), (2, 128, 128, 8, 50), (1, 256, 256, 8, 50)],
}
LINK_ONLY = {"icebreaker": 24, "upduino3": 24}


def _log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _route_entries(cores, neurons):
    return min(1 << 16, 1 << max(6, math.ceil(math.log2(cores * neurons))))


def _retry_clock(board, fmax):
    """The highest clock below `fmax` (in 1 MHz steps) that check_config accepts, or None."""
    for mhz in range(int(math.floor(fmax)), 9, -1):
        try:
            check_config(board, clock_mhz=mhz)
            return mhz
        except BoardConfigError:
            continue
    return None


def _attempt(board_name, cores, neurons, axons, lanes, clock, out_root, chip_factory=None):
    record = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "board": board_name, "cores": cores, "neurons": neurons, "axons": axons, "lanes": lanes,
              "target_mhz": clock, "chip": "neuro" if chip_factory is None else chip_factory.__name__}
    try:
        config = check_config(board_name, cores=cores, neurons=neurons, axons=axons, lanes=lanes,
                              route_entries=_route_entries(cores, neurons), clock_mhz=clock)
    except BoardConfigError as error:
        return {**record, "status": "invalid", "error": str(error)}
    out = out_root / f"{board_name}-{record['chip']}-{cores}x{neurons}x{axons}x{lanes}@{clock}"
    # failed builds are not in the build cache: remember them by design hash here
    failures_file = out_root / "failures.json"
    failures = json.loads(failures_file.read_text()) if failures_file.is_file() else {}
    key = design_hash(config, chip_factory)
    if key in failures:
        _log(f"{board_name}: {cores}x{neurons}/{axons}/P{lanes}: same design failed before ({key})")
        return {**record, **failures[key], "design_hash": key}
    try:
        result = build_bitstream(config, out=out, progress=_log, chip_factory=chip_factory,
                                 allow_timing_fail=True)
    except BuildError as error:
        text = str(error)
        fits = not ("Unable to place" in text or "no BELs remaining" in text or "too many" in text)
        # nextpnr prints the device utilisation just before it gives up placing
        needed = {name: {"used": int(used), "available": int(available)}
                  for name, used, available in re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)", text)
                  if int(used)}
        failure = {"status": "failed" if fits else "does not fit", "utilisation": needed,
                   "error": text[-1500:], "failed_at": record["measured"]}
        if error.design_hash is not None:
            failures[error.design_hash] = failure
            out_root.mkdir(parents=True, exist_ok=True)
            failures_file.write_text(json.dumps(failures, indent=2) + "\n")
        return {**record, **failure, "design_hash": error.design_hash}
    summary = result.summary()
    return {**record, **summary, "status": "ok" if result.timing_met else "timing not met"}


def bench_board(board_name, out_root, records, retry=True):
    best = None
    for cores, neurons, axons, lanes, clock in CANDIDATES.get(board_name, []):
        record = _attempt(board_name, cores, neurons, axons, lanes, clock, out_root)
        records.append(record)
        _log(f"{board_name}: {cores}x{neurons}/{axons}/P{lanes} @ {clock} MHz: {record['status']}"
             + (f", fmax {record['fmax_mhz']} MHz" if record.get("fmax_mhz") else ""))
        if record["status"] == "timing not met" and retry:
            retry = _retry_clock(board_name, record["fmax_mhz"])
            if retry is not None:
                record = _attempt(board_name, cores, neurons, axons, lanes, retry, out_root)
                records.append(record)
                _log(f"{board_name}: retry @ {retry} MHz: {record['status']}")
        if record["status"] == "ok":
            best = record
            break
    if board_name in LINK_ONLY:
        record = _attempt(board_name, 1, 16, 16, 4, LINK_ONLY[board_name], out_root, chip_factory=LoopbackChip)
        records.append(record)
        _log(f"{board_name}: link only: {record['status']}"
             + (f", fmax {record['fmax_mhz']} MHz" if record.get("fmax_mhz") else ""))
    return best


def _collect(args):
    records, best = [], {}
    for folder in args.collect:
        summary = json.loads((folder / "summary.json").read_text())
        measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((folder / "summary.json").stat().st_mtime))
        record = {"measured": measured, "collected_from": str(folder), **summary,
                  "target_mhz": summary["target_mhz"],
                  "status": "ok" if summary["timing_met"] else "timing not met"}
        records.append(record)
        board = summary["board"]
        size = (summary["cores"] * summary["neurons"] * summary["axons"], summary["cores"] * summary["neurons"])
        if record["status"] == "ok" and summary["chip"] == "neuro" and (
                best.get(board) is None or size > (best[board]["cores"] * best[board]["neurons"] * best[board]["axons"],
                                                   best[board]["cores"] * best[board]["neurons"])):
            best[board] = record
    if args.json and args.json.is_file() and args.update:
        previous = json.loads(args.json.read_text())
        best = {**{k: v for k, v in previous["largest_fitting"].items() if k not in best}, **best}
        records = previous["attempts"] + records
    text = json.dumps({"largest_fitting": best, "attempts": records}, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--boards", help="comma-separated board names (default: every buildable board)")
    parser.add_argument("--out", type=Path, default=Path("build/bench/boards"), help="build folders")
    parser.add_argument("--update", action="store_true",
                        help="keep the --json file's results for the boards not benched in this run")
    parser.add_argument("--no-retry", action="store_true",
                        help="do not rebuild a configuration that misses timing at a lower clock")
    parser.add_argument("--collect", type=Path, nargs="+", metavar="DIR",
                        help="instead of building, record the figures of finished builds (their "
                             "summary.json, as `neurofabric build` writes it) as attempts")
    args = parser.parse_args(argv)
    if args.collect:
        return _collect(args)
    names = args.boards.split(",") if args.boards else [b.name for b in BOARDS.values() if b.buildable]
    for name in names:
        if name not in BOARDS or not BOARDS[name].buildable:
            parser.error(f"--boards: {name!r} is not a buildable board; one of "
                         f"{', '.join(b.name for b in BOARDS.values() if b.buildable)}")
    records, best = [], {}
    for name in names:
        best[name] = bench_board(name, args.out, records, retry=not args.no_retry)
    if args.update and args.json and args.json.is_file():     # read now: other runs may have written it
        previous = json.loads(args.json.read_text())
        best = {**{k: v for k, v in previous["largest_fitting"].items() if k not in names}, **best}
        records = [r for r in previous["attempts"] if r["board"] not in names] + records
    result = {"largest_fitting": best, "attempts": records}
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    for name, record in best.items():
        if record is None:
            print(f"{name}: no candidate configuration fits and meets timing")
        else:
            cells = record["cells"]
            print(f"{name}: {record['cores']} x {record['neurons']} neurons / {record['axons']} axons / "
                  f"{record['lanes']} lanes; fmax {record['fmax_mhz']} MHz (target {record['target_mhz']}); "
                  f"LUT4 {cells['lut4']}, FF {cells['ff']}, BRAM {cells['bram']}, SPRAM {cells['spram']}, "
                  f"DSP {cells['dsp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
