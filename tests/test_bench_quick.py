"""The quick modes of bench/learning.py and bench/e2e.py, so the benchmarks cannot rot: each
runs end to end and reports its figures (measurements: only their presence and consistency are
checked here, never a speed)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_e2e_quick(tmp_path):
    out = tmp_path / "e2e.json"
    assert load_bench("e2e").main(["--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["network"]["steps"] == 100
    assert figures["results"]["numpy"]["spikes_identical_to_model"] is True
    assert figures["model_events_per_s"] > 0 and figures["numpy_events_per_s"] > 0
    assert figures["results"]["sim"] == {"error": "skipped (--no-sim)"}


def test_learning_quick(tmp_path):
    out, runs = tmp_path / "learning.json", tmp_path / "runs.jsonl"
    load_bench("learning").main(["--quick", "--json", str(out), "--runs", str(runs)])
    figures = json.loads(out.read_text())
    # the window is measured on the simulated core: within 1 LSB of the rule it documents,
    # and equal to the model's on every point
    assert figures["window_max_abs_error"] <= 1.0
    assert figures["window_model_mismatches"] == []
    assert figures["throughput"]["all"]["weight_updates_per_cycle"] > 0
    # one seed, learning on and off, each recorded with its parameters
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted((r["params"]["learning"], r["seed"]) for r in records) == [(False, 0), (True, 0)]
    seed = figures["seeds"]["0"]
    assert figures["stdp_gain"] == seed["learning"]["accuracy"] - seed["learning_off"]["accuracy"]
    assert 0 <= figures["stdp_accuracy_random_init"] <= 1
