"""Seeded parameter sweeps through Dask: many model (or sim-device) runs, each recorded with its
parameters.

    from neurofabric.host.sweep import grid, sweep
    records = sweep(my_run, grid(shift=[3, 4], k=[1, 2]), seeds=[0, 1, 2], record="runs.jsonl")

``my_run(seed=..., **params)`` is any picklable function (defined at module level) returning a
JSON-serialisable dict. Every (parameters, seed) pair is one Dask task; the records come back in
the order of the runs, each ``{"params", "seed", "result", "wall_s", "error"}``, and are
appended as JSON lines to `record` as they finish. A run that raises is recorded with its error
(``result`` None) rather than stopping the sweep.

Where the runs go: a `client` (``distributed.Client``) if given; else a `scheduler` address
(``"tcp://host:8786"``: any running Dask cluster); else a ``distributed.LocalCluster`` of
`n_workers` processes with `threads_per_worker` threads each, started for the sweep and closed
after it. Dask is the optional extra ``neurofabric[sweep]``.
"""

import itertools
import json
import time
import traceback
from pathlib import Path

__all__ = ["grid", "sweep", "summarise"]


def grid(**axes):
    """Every combination of the values of `axes` ({name: list of values}), as a list of dicts in
    the order of the axes (the last one varies fastest)."""
    names = list(axes)
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"grid axis {name!r} must be a list of values, not {values!r}")
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


def _one(function, params, seed):
    """One run on a worker: its result or its error, and its wall time."""
    start = time.perf_counter()
    try:
        result, error = function(seed=seed, **params), None
    except Exception as e:                  # recorded with the run, the sweep goes on
        result, error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
    return {"params": params, "seed": seed, "result": result, "wall_s": time.perf_counter() - start,
            "error": error}


def sweep(function, points=None, seeds=(0,), *, client=None, scheduler=None, n_workers=1,
          threads_per_worker=1, record=None, progress=None):
    """Run ``function(seed=s, **p)`` for every point `p` of `points` (a list of dicts, e.g. from
    :func:`grid`; None: one point with no parameters) and every seed `s` of `seeds`, on Dask.
    Returns the records in (point, seed) order; `record`: a path to append them to as JSON lines
    as they finish. `progress`: show a progress line on stderr (None: if it is a terminal)."""
    from distributed import Client, LocalCluster, as_completed

    from neurofabric.host.chip import Progress

    points = [{}] if points is None else [dict(p) for p in points]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds must be non-negative integers, not {s!r}")
    if client is not None and scheduler is not None:
        raise ValueError("give a client or a scheduler address, not both")
    runs = [(p, s) for p in points for s in seeds]
    cluster = own = None
    if client is None:
        if scheduler is not None:
            client = own = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                   processes=True, dashboard_address=None)
            client = own = Client(cluster)
    records = [None] * len(runs)
    path = Path(record) if record is not None else None
    try:
        futures = {client.submit(_one, function, p, s, pure=False): i for i, (p, s) in enumerate(runs)}
        with Progress(len(runs), "sweep", progress) as bar:
            for future in as_completed(futures):
                i = futures[future]
                records[i] = future.result()
                if path is not None:
                    with path.open("a") as f:
                        f.write(json.dumps(records[i]) + "\n")
                bar.update(1)
    finally:
        if own is not None:
            own.close()
        if cluster is not None:
            cluster.close()
    return records


def summarise(records, key):
    """Per point: the mean, min and max of ``result[key]`` over its seeds (failed runs are
    counted in ``errors``), as a list of dicts in the order the points first appear."""
    groups = {}
    for r in records:
        groups.setdefault(json.dumps(r["params"], sort_keys=True), []).append(r)
    out = []
    for runs in groups.values():
        values = [r["result"][key] for r in runs if r["error"] is None]
        out.append({"params": runs[0]["params"], "seeds": [r["seed"] for r in runs],
                    "mean": sum(values) / len(values) if values else None,
                    "min": min(values) if values else None, "max": max(values) if values else None,
                    "errors": sum(r["error"] is not None for r in runs)})
    return out
