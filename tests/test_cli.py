"""Smoke tests of the `neurofabric` command line (neurofabric/cli.py: pkg/cli.py)."""

import subprocess
import sys

import numpy as np

from neurofabric.cli import main


def test_info(capsys):
    assert main(["info", "--device", "model"]) == 0
    out = capsys.readouterr().out
    assert "build model" in out and "2 core(s) x 128 neurons x 128 axons" in out
    assert "learning yes, input encoder 64 channels" in out


def test_run_builtin(capsys):
    assert main(["run", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "hidden:" in out and "output:" in out
    assert "steps=41" in out        # 40 run steps + the step load() takes to settle the chip


def test_run_npz_network(tmp_path, capsys):
    path = tmp_path / "net.npz"
    np.savez(path, w0=np.full((5, 3), 300), w1=np.full((3, 2), 600), threshold=[1000, 1000],
             rates=np.full(5, 0.5))
    assert main(["run", "--network", str(path), "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "layer0:" in out and "layer1:" in out


def test_errors_exit_with_one(tmp_path, capsys):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros(3))
    assert main(["run", "--network", str(path)]) == 1
    assert "no weight arrays" in capsys.readouterr().err
    assert main(["info", "--device", "usb://0"]) == 1
    assert "unknown device" in capsys.readouterr().err


def test_demo_on_the_model(tmp_path, capsys):
    assert main(["demo", "--device", "model", "--limit", "20", "--steps", "8", "--quiet", "--hidden", "16",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and (tmp_path / "confusion.png").exists()


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "neurofabric.cli", "info"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "version" in result.stdout


def test_sim_server_delegates(capsys):
    import pytest
    with pytest.raises(SystemExit) as info:
        main(["sim-server", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: neurofabric sim-server") and "print 'port N'" in out


def test_boards_subcommands_pass_through(capsys):
    assert main(["boards"]) == 0
    assert "icebreaker" in capsys.readouterr().out
    assert main(["build", "--board", "no-such-board"]) == 2
    assert "no-such-board" in capsys.readouterr().err


def test_help_names_the_command_it_documents(capsys):
    """Every subcommand's --help starts with its own usage line (`neurofabric boards --help` once
    printed `usage: neurofabric list`), and docs/host.md's command-line section lists them all."""
    from pathlib import Path

    from neurofabric.cli import PASS_THROUGH, build_parser
    names = [*build_parser()._subparsers._group_actions[0].choices]
    assert set(PASS_THROUGH) <= set(names) and "boards" in names
    for name in names:
        try:
            assert main([name, "--help"]) == 0
        except SystemExit as exit_:
            assert exit_.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: neurofabric {name}"), (name, out[:80])
    docs = (Path(__file__).resolve().parent.parent / "docs" / "host.md").read_text()
    section = docs.split("## Command line")[1].split("\n## ")[0]
    for name in names:
        assert f"neurofabric {name}" in section, name
    assert "demo --learn" in section
