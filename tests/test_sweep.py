"""Sweeps through Dask (host/sweep.py): the grid, seeded runs recorded with their parameters, and
failed runs recorded with their errors, on a one-worker LocalCluster and on a given client."""

import json

import pytest

from neurofabric.host.sweep import grid, summarise, sweep


def test_grid_is_every_combination_last_axis_fastest():
    assert grid(a=[1, 2], b=["x", "y"]) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                            {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValueError, match="grid axis 'a' must be a list"):
        grid(a=3)


def test_sweep_on_a_local_cluster_records_every_run(tmp_path):
    # dict(seed=s, **params) echoes what the worker was given: a run that cannot lie about
    # its inputs
    log = tmp_path / "runs.jsonl"
    records = sweep(dict, grid(rate=[1, 2]), seeds=[0, 5], record=log, progress=False)
    assert [(r["params"], r["seed"]) for r in records] == [({"rate": 1}, 0), ({"rate": 1}, 5),
                                                          ({"rate": 2}, 0), ({"rate": 2}, 5)]
    assert all(r["result"] == {"seed": r["seed"], **r["params"]} and r["error"] is None for r in records)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["params"]["rate"], r["seed"]) for r in lines) == [(1, 0), (1, 5), (2, 0), (2, 5)]
    rate = summarise(records, "rate")
    assert [(s["mean"], s["min"], s["errors"]) for s in rate] == [(1, 1, 0), (2, 2, 0)]


def test_a_failing_run_is_recorded_and_the_sweep_goes_on():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        # int() takes no `seed` keyword: every run fails, each with its own record
        records = sweep(int, [{}], seeds=[0, 1], client=client, progress=False)
    assert [r["seed"] for r in records] == [0, 1]
    assert all(r["result"] is None and "TypeError" in r["error"] for r in records)
    assert summarise(records, "x")[0]["errors"] == 2


def test_sweep_rejects_bad_seeds_before_starting_anything():
    with pytest.raises(ValueError, match="seeds must be non-negative integers"):
        sweep(dict, seeds=[-1])
    with pytest.raises(ValueError, match="at least one seed"):
        sweep(dict, seeds=[])
