"""Tests of neurofabric.boards: PLL settings, board tops, the build/program command line, and one
full iCEBreaker build (synthesis, place and route, timing)."""

import json
import os
import random
import re
from fractions import Fraction

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from neurofabric.boards import build as build_module
from neurofabric.boards.build import BOARDS, build_bitstream, main
from neurofabric.boards.catalog import BoardConfigError, check_config
from neurofabric.boards.pll import (
    ECP5_PFD,
    ECP5_VCO,
    ICE40_PFD,
    ICE40_VCO,
    XILINX7_PFD,
    XILINX7_VCO,
    PllError,
    ecp5_pll,
    ice40_pll,
    xilinx7_pll,
)
from neurofabric.boards.top import BoardTop, _PulseStretcher, _Ticker

# --- PLL settings ---------------------------------------------------------------------------------

# (f_out requested, DIVR, DIVF, DIVQ, FILTER_RANGE) printed by `icepll -i 12 -o <f_out>`
ICEPLL_12MHZ = [
    (36, 0, 47, 4, 1), (32.256, 0, 85, 5, 1), (32, 0, 84, 5, 1), (255, 0, 84, 2, 1),
    (60, 0, 79, 4, 1), (25.175, 0, 66, 5, 1), (50, 0, 66, 4, 1), (48, 0, 63, 4, 1),
]


@pytest.mark.parametrize("f_out, divr, divf, divq, filter_range", ICEPLL_12MHZ)
def test_ice40_pll_matches_icepll(f_out, divr, divf, divq, filter_range):
    config = ice40_pll(12, f_out)
    assert (config.divr, config.divf, config.divq, config.filter_range) == (divr, divf, divq, filter_range)
    assert config.f_out == Fraction(12 * (divf + 1), (divr + 1) << divq)


def _ice40_reference(f_in, f_out):
    """icepll's search written out directly: first strictly better setting in loop order."""
    best = None
    for divr in range(16):
        for divf in range(128):
            for divq in range(1, 7):
                f_pfd = f_in / (divr + 1)
                f_vco = f_pfd * (divf + 1)
                if not (10 <= f_pfd <= 133 and 533 <= f_vco <= 1066):
                    continue
                error = abs(f_vco / 2 ** divq - f_out)
                if best is None or error < best[0]:
                    best = (error, divr, divf, divq)
    return best[1:]


def test_ice40_pll_random_targets_are_optimal_and_in_range(seed):
    rng = random.Random(seed)
    for _ in range(6):
        f_in = Fraction(rng.choice([12, 16, 25, 48, 100]))
        f_out = Fraction(rng.randrange(16_000, 275_000), 1000)
        config = ice40_pll(f_in, f_out)
        assert (config.divr, config.divf, config.divq) == _ice40_reference(f_in, f_out)
        assert ICE40_PFD[0] <= config.f_pfd <= ICE40_PFD[1]
        assert ICE40_VCO[0] <= config.f_vco <= ICE40_VCO[1]
        assert 1 <= config.filter_range <= 6


def test_ecp5_pll_matches_ecppll():
    # `ecppll -i 12 -o 16`: CLKI_DIV 3, CLKFB_DIV 4, CLKOP_DIV 37, CLKOP_CPHASE 18
    config = ecp5_pll(12, 16)
    assert (config.clki_div, config.clkfb_div, config.clkop_div, config.clkop_cphase) == (3, 4, 37, 18)
    # `ecppll -i 25 -o 302.325`: CLKI_DIV 6, CLKFB_DIV 73, CLKOP_DIV 2 (304.167 MHz)
    config = ecp5_pll(25, 302.325)
    assert (config.clki_div, config.clkfb_div, config.clkop_div) == (6, 73, 2)
    assert config.f_out == Fraction(25 * 73, 6)
    # 25 -> 100 MHz exactly, VCO 600 MHz
    config = ecp5_pll(25, 100)
    assert (config.f_out, config.f_vco) == (100, 600)


def _ecp5_reference(f_in, f_out):
    best = None
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if not ECP5_PFD[0] <= f_pfd <= ECP5_PFD[1]:
            continue
        for clkfb in range(1, 81):
            for clkop in range(1, 129):
                f_vco = f_pfd * clkfb * clkop
                if not ECP5_VCO[0] <= f_vco <= ECP5_VCO[1]:
                    continue
                error = abs(f_pfd * clkfb - f_out)
                if best is None or error < best[0] or (error == best[0] and abs(f_vco - 600) < abs(best[1] - 600)):
                    best = (error, f_vco, clki, clkfb, clkop)
    return best[2:]


def test_ecp5_pll_random_targets_match_exhaustive_search(seed):
    rng = random.Random(seed)
    for _ in range(2):
        f_in = Fraction(rng.choice([12, 25, 48]))
        f_out = Fraction(rng.randrange(10_000, 400_000), 1000)
        config = ecp5_pll(f_in, f_out)
        assert (config.clki_div, config.clkfb_div, config.clkop_div) == _ecp5_reference(f_in, f_out)
        assert config.clkop_cphase == config.clkop_div // 2


def test_xilinx7_pll_in_range_and_exact_where_possible():
    for f_out in (50, 100, 125, 150, 200):
        config = xilinx7_pll(100, f_out)
        assert config.f_out == f_out
        assert XILINX7_VCO[0] <= config.f_vco <= XILINX7_VCO[1]
        assert XILINX7_PFD[0] <= config.f_in / config.divclk_divide <= XILINX7_PFD[1]
    config = xilinx7_pll(100, 33.3)
    assert abs(config.f_out - Fraction("33.3")) < Fraction("0.05")


@pytest.mark.parametrize("call, message", [
    (lambda: ice40_pll(12, 300), r"f_out = 300 MHz is out of range: allowed \[16, 275\]"),
    (lambda: ice40_pll(5, 48), r"f_in = 5 MHz is out of range: allowed \[10, 133\]"),
    (lambda: ecp5_pll(25, 5), r"f_out = 5 MHz is out of range"),
    (lambda: ecp5_pll(25, "100"), r"f_out must be a number"),
    (lambda: xilinx7_pll(100, 900), r"f_out = 900 MHz is out of range"),
])
def test_pll_rejects_unreachable_requests(call, message):
    with pytest.raises(PllError, match=message):
        call()


# --- board tops -------------------------------------------------------------------------------------

SMALL = dict(cores=1, neurons=16, axons=16, lanes=4, route_entries=64)


def _prepare(board_name, **options):
    config = check_config(board_name, **{**SMALL, **options})
    board = BOARDS[board_name]
    plan = board.platform().build(BoardTop(config), name="top", do_build=False,
                                  **build_module._overrides(board))
    return config, plan


@pytest.mark.parametrize("board_name", sorted(BOARDS))
def test_every_board_elaborates(board_name):
    """The full chip behind each board top goes through Amaranth's platform preparation; the
    constraint files place the UART pins and constrain the PLL clock to its frequency."""
    config, plan = _prepare(board_name)
    board = config.board
    files = {name: content if isinstance(content, str) else content.decode() for name, content in plan.files.items()}
    constraints = next(text for name, text in files.items() if name.endswith((".pcf", ".lpf", ".xdc")))
    assert "uart_0__rx__io" in constraints and "uart_0__tx__io" in constraints
    for role, (name, number, subsignal) in board.leds.items():
        port = f"{name}_{number}__{subsignal}__io" if subsignal else f"{name}_{number}__io"
        assert port in constraints, (role, port)
    f_mhz = float(config.pll.f_out)
    if board.family == "ice40":
        assert re.search(rf"set_frequency clk {f_mhz:g}\b", constraints)
    elif board.family == "ecp5":
        assert f'FREQUENCY NET "clk" {f_mhz * 1e6:.1f} HZ' in constraints
    else:
        assert f'create_clock -name clk -period {1000 / f_mhz!r} [get_nets "clk"]' in constraints
    rtlil_or_verilog = files.get("top.il") or files["top.v"]
    primitive = {"pad": "SB_PLL40_PAD", "hfosc": "SB_PLL40_CORE"}.get(
        board.clock, {"ecp5": "EHXPLLL", "xilinx7": "PLLE2_BASE"}.get(board.family))
    assert primitive in rtlil_or_verilog
    assert "UARTReceiver" in rtlil_or_verilog or "receiver" in rtlil_or_verilog


def test_pll_parameters_reach_the_primitive():
    config, plan = _prepare("icebreaker", clock_mhz=36)
    il = plan.files["top.il"]
    assert (config.pll.divr, config.pll.divf, config.pll.divq) == (0, 47, 4)
    block = il[il.index("SB_PLL40_PAD"):]
    block = block[:block.index("\n  end")]
    assert re.search(r"parameter \\DIVF 47\b", block) and re.search(r"parameter \\DIVQ 4\b", block)
    config, plan = _prepare("ulx3s-85f", clock_mhz=100)
    block = plan.files["top.il"][plan.files["top.il"].index("EHXPLLL"):]
    block = block[:block.index("\n  end")]
    assert re.search(r"parameter \\CLKOP_DIV 6\b", block) and re.search(r"parameter \\CLKFB_DIV 4\b", block)


def test_uart_divisor_follows_the_pll_clock():
    config = check_config("icebreaker", clock_mhz=36, baud=3_000_000)
    assert config.divisor == 12 and config.baud_actual == 3_000_000
    config = check_config("ulx3s-85f", clock_mhz=75, baud=3_000_000)
    assert config.divisor == 25


def test_pulse_stretcher_and_ticker(seed):
    """Against a Python model of the docstrings: the ticker pulses every 4 cycles; the stretcher
    holds its output until 3 ticks have passed since its input was last high."""
    rng = random.Random(seed)
    m = Module()
    m.submodules.ticker = ticker = _Ticker(2)
    m.submodules.dut = dut = _PulseStretcher(3)
    m.d.comb += dut.tick.eq(ticker.tick)
    pattern = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1] + [int(rng.random() < 0.05) for _ in range(80)]
    seen = []

    async def bench(ctx):
        for bit in pattern:
            ctx.set(dut.i, bit)
            seen.append((ctx.get(ticker.tick), ctx.get(dut.o)))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expected, left, count = [], 0, 0
    for bit in pattern:
        tick = int(count == 0 and len(expected) > 0)     # the counter wrapped on the last edge
        expected.append((tick, int(bit or left != 0)))
        if bit:
            left = 3
        elif tick and left:
            left -= 1
        count = (count + 1) % 4
    assert seen == expected
    assert any(o for _, o in seen) and not all(o for _, o in seen)


# --- command line -------------------------------------------------------------------------------------

@pytest.fixture
def no_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a build was started")
    monkeypatch.setattr(build_module, "build_bitstream", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--board", "nope"], r"board: 'nope' is not a known board; one of .*icebreaker"),
    (["--board", "icebreaker", "--cores", "0"], r"cores = 0 is out of range: allowed \[1, 255\]"),
    (["--board", "icebreaker", "--cores", "256"], r"cores = 256 is out of range: allowed \[1, 255\]"),
    (["--board", "icebreaker", "--lanes", "3"], r"lanes = 3 must be a power of two"),
    (["--board", "icebreaker", "--lanes", "128"], r"lanes = 128 is out of range: allowed \[1, 64\]"),
    (["--board", "icebreaker", "--neurons", "10", "--lanes", "4"], r"neurons = 10 must be a multiple of lanes = 4"),
    (["--board", "icebreaker", "--neurons", "70000"], r"neurons = 70000 is out of range: allowed \[1, 65536\]"),
    (["--board", "icebreaker", "--axons", "0"], r"axons = 0 is out of range"),
    (["--board", "ulx3s-85f", "--axons", "65536", "--neurons", "512"], r"axons \* neurons = 33554432 is out of range"),
    (["--board", "icebreaker", "--clock-mhz", "500"], r"clock_mhz: f_out = 500 MHz is out of range: allowed \[16, 275\]"),
    (["--board", "ulx3s-85f", "--clock-mhz", "nan"], r"clock_mhz must be a number"),
    (["--board", "icebreaker", "--baud", "100"], r"baud = 100 is out of range: allowed \[9600, 12000000\]"),
    (["--board", "icebreaker", "--clock-mhz", "20", "--baud", "6000000"], r"baud = 6000000 is out of range for a"),
    (["--board", "icebreaker", "--clock-mhz", "25", "--baud", "3000000"], r"baud = 3000000: .* error"),
])
def test_cli_rejects_bad_options_before_building(argv, message, no_builds, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not out.exists()


def test_cli_usage_errors(no_builds, capsys):
    assert main(["build"]) == 2                       # --board is required
    assert "--board" in capsys.readouterr().err
    assert main(["build", "--board", "icebreaker", "--cores", "two"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_cli_list(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for name in BOARDS:
        assert name in listing


def test_program_needs_openfpgaloader(monkeypatch, tmp_path, capsys):
    bitstream = tmp_path / "top.bin"
    bitstream.write_bytes(b"\xff")
    monkeypatch.setattr(build_module.shutil, "which", lambda name: None)
    assert main(["program", "--board", "icebreaker", "--bitstream", str(bitstream)]) == 1
    assert "openFPGALoader not found on PATH" in capsys.readouterr().err


def test_program_runs_openfpgaloader(monkeypatch, tmp_path):
    bitstream = tmp_path / "top.bit"
    bitstream.write_bytes(b"\xff")
    monkeypatch.setattr(build_module.shutil, "which", lambda name: f"/opt/bin/{name}")
    calls = []

    class Done:
        returncode = 0

    status = build_module.program_board(BOARDS["ulx3s-85f"], bitstream, flash=True,
                                        runner=lambda cmd: calls.append(cmd) or Done())
    assert status == 0
    assert calls == [["/opt/bin/openFPGALoader", "-b", "ulx3s", "-f", str(bitstream)]]


def test_program_without_bitstream(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(build_module.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert main(["program", "--board", "icebreaker", "--out", str(tmp_path)]) == 1
    assert "run `build --board icebreaker` first" in capsys.readouterr().err


def test_build_tree_only_board(tmp_path, capsys):
    """A board without a pip-installable toolchain gets its build tree, and no tool runs."""
    out = tmp_path / "arty"
    assert main(["build", "--board", "arty-a7-35", "--cores", "1", "--neurons", "16", "--axons", "16",
                 "--lanes", "4", "--route-entries", "64", "--out", str(out)]) == 0
    assert (out / "build_top.sh").is_file() and (out / "top.xdc").is_file()
    summary = json.loads(capsys.readouterr().out)
    assert summary["fmax_mhz"] is None and summary["board"] == "arty-a7-35"
    assert not (out / "top.bit").exists()


# --- one real build -------------------------------------------------------------------------------------

#: the neuron chip of the default-run iCEBreaker build (the board default, 1 x 256 x 256 x 1, is
#: built by bench/boards.py: same logic, larger memories and a longer place and route)
ICEBREAKER_TEST_SHAPE = dict(cores=1, neurons=16, axons=16, lanes=1, route_entries=64)


@pytest.mark.synth
def test_icebreaker_build_meets_timing(tmp_path):
    """Full iCEBreaker flow (yosys, nextpnr, icepack) of the board top around the neuron chip
    (1 x 16 x 16 x 1) at the board's 24 MHz, 3 Mbaud: it fits, timing is met and the bitstream
    is written."""
    config = check_config("icebreaker", **ICEBREAKER_TEST_SHAPE)
    assert config.f_clk_mhz == 24
    result = build_bitstream(config, out=tmp_path / "icebreaker", use_cache=False, progress=print)
    assert result.chip == "neuro"
    assert result.timing_met, result.summary()
    assert result.fmax_mhz >= 24
    assert result.bitstream.is_file() and result.bitstream.stat().st_size > 100_000
    summary = json.loads((tmp_path / "icebreaker" / "summary.json").read_text())
    assert summary["timing_met"] is True and summary["uart_divisor"] == 8
    used = summary["utilisation"]
    assert used["ICESTORM_PLL"]["used"] == 1
    for resource in ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM"):
        assert 0 < used[resource]["used"] <= used[resource]["available"], (resource, used)
    # the weights are in SPRAM and the decay products in DSPs
    assert summary["cells"]["spram"] >= 1 and summary["cells"]["dsp"] >= 3


def test_board_chip_over_the_link_matches_the_model(seed):
    """The chip as an iCE40 board builds it (the link's request held, no copy in the chip; small
    router FIFOs) behind the host link, in the Amaranth simulator: identical spikes, state and
    counters to the bit-exact model; IDENTIFY names the board."""
    import numpy as np

    from neurofabric.boards.top import board_chip_factory
    from neurofabric.hdl.top import LinkedChip
    from neurofabric.host import IF, LIF, Chip, Network
    from neurofabric.host.link import LinkBackend
    from neurofabric.host.model import ChipShape
    from neurofabric.host.model_backend import ModelBackend
    from neurofabric.sim.device import PysimTransport

    shape = ChipShape(**ICEBREAKER_TEST_SHAPE)
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(5)
    hid = net.population(8, LIF(threshold=300, tau_mem=8), bias=rng.integers(-10, 30, 8))
    out = net.population(4, IF(400))
    net.connect(inp, hid, weights=rng.integers(-50, 200, (5, 8)))
    net.connect(hid, out, weights=rng.integers(-60, 150, (8, 4)))
    linked = LinkedChip(shape, chip_factory=board_chip_factory("ice40"), build_name="icebreaker")
    assert linked.chip.request_held and linked.chip.router.axon_fifo_depth == 4
    transport = PysimTransport(linked, timeout_cycles=200_000)
    backend = LinkBackend(transport, build="icebreaker")
    assert backend.identify().build == "icebreaker"
    with Chip(backend) as link, Chip(ModelBackend(shape)) as model:
        for chip in (link, model):
            chip.load(net)
        events = rng.random((10, 5)) < 0.4
        a, b = (chip.run({inp: events}, steps=10) for chip in (link, model))
        assert len(b.raw) > 0               # the comparison covers spikes (>= 11 for seeds 0..199)
        np.testing.assert_array_equal(a.raw, b.raw)
        for pop in (hid, out):
            sa, sb = link.read_state(pop), model.read_state(pop)
            for key in sa:
                np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
        sa, sb = link.stats(), model.stats()
        sa.pop("output_stalls"), sb.pop("output_stalls")
        assert sa == sb


@pytest.mark.synth
def test_ice40_weights_map_to_spram(tmp_path):
    """Yosys, as the iCE40 board build runs it (synth_ice40 -dsp -spram after the build's
    script_after_read), puts the core's weight memory in SPRAM and its multipliers in DSPs; the
    other memories stay in block RAM. (ECP5 builds get no such commands.)"""
    import subprocess

    from neurofabric.toolchain import yowasp_env

    _, plan = _prepare("icebreaker", neurons=16, axons=16, lanes=1)
    assert "delete t:$meminit_v2 r:MEMID=\\weight_mem %i" in plan.files["top.ys"]
    _, ecp5_plan = _prepare("ulx3s-85f")
    assert "weight_mem" not in ecp5_plan.files["top.ys"] and "-spram" not in ecp5_plan.files["top.ys"]
    plan.extract(str(tmp_path))
    env = {**os.environ, **yowasp_env(("ice40",))}
    subprocess.run([env["YOSYS"], "-q", "-l", "top.rpt", "top.ys"], cwd=tmp_path, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    log = (tmp_path / "top.rpt").read_text()
    mapped = dict(re.findall(r"mapping memory \S+\.(\w+) via (\S+)", log))
    assert mapped["weight_mem"] == "$__ICE40_SPRAM_", mapped
    assert mapped["neuron_mem"] == "$__ICE40_RAM4K_", mapped
    cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
    # 256 words of 8 bits: one SPRAM (16 k x 16); the sweep's decay multipliers are SB_MAC16s
    assert cells.get("SB_SPRAM256KA") == 1 and cells.get("SB_MAC16", 0) >= 1, cells


def test_timing_failure_is_reported(monkeypatch, tmp_path, capsys):
    """A build whose fmax is below the target fails with a message naming both clocks, and its
    figures are still written. (The toolchain run is replaced by its outputs.)"""
    def fake_tools(folder, env, say, label):
        (folder / "report.json").write_text(json.dumps({
            "fmax": {"clk": {"achieved": 17.5, "constraint": 24.0}},
            "utilization": {"ICESTORM_LC": {"used": 100, "available": 5280}}}))
        (folder / "stat.json").write_text(json.dumps({"design": {"num_cells_by_type": {"SB_LUT4": 90}}}))
        (folder / "top.bin").write_bytes(b"\0")
    monkeypatch.setattr(build_module, "_run_script", fake_tools)
    out = tmp_path / "out"
    argv = ["build", "--board", "icebreaker", "--out", str(out), "--no-cache",
            *(f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items())]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "timing NOT met: the design reaches 17.50 MHz but the clock is 24 MHz" in error, error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing_met"] is False and summary["fmax_mhz"] == 17.5
    assert summary["cells"]["lut4"] == 90
    assert "NOT met" in (out / "timing.txt").read_text()
    assert main([*argv, "--allow-timing-fail"]) == 0


def test_check_config_defaults_and_board_objects():
    for board in BOARDS.values():
        config = check_config(board)
        assert config.shape == board.default
        assert abs(config.f_clk_mhz - board.default_clock_mhz) <= board.default_clock_mhz / 100
        assert abs(config.baud_actual - board.baud) / board.baud <= 0.02
    with pytest.raises(BoardConfigError, match="cores must be an integer"):
        check_config("icebreaker", cores=1.5)


@pytest.mark.parametrize("clocks, fmax", [
    ({"$glbnet$clk": 80.7, "clk25_0__io": 300.0}, 80.7),      # nextpnr-ecp5 names the global net
    ({"clk": 25.4, "clk12_0__io": 400.0}, 25.4),
    ({"other": 31.0, "another": 29.0}, 29.0),                 # no sync clock: the slowest counts
])
def test_fmax_is_the_sync_clock(tmp_path, clocks, fmax):
    (tmp_path / "report.json").write_text(json.dumps({
        "fmax": {name: {"achieved": value, "constraint": 25.0} for name, value in clocks.items()},
        "utilization": {"TRELLIS_COMB": {"used": 10, "available": 24288}}}))
    (tmp_path / "stat.json").write_text(json.dumps({"design": {"num_cells_by_type": {
        "LUT4": 7, "TRELLIS_FF": 5, "DP16KD": 2, "MULT18X18D": 1, "CCU2C": 3}}}))
    got, _, utilisation, cells = build_module._parse(tmp_path, check_config("colorlight-5a75b", **SMALL))
    assert got == fmax
    assert cells == {"lut4": 7, "ff": 5, "bram": 2, "spram": 0, "dsp": 1, "carry": 3}
    assert utilisation == {"TRELLIS_COMB": {"used": 10, "available": 24288}}
