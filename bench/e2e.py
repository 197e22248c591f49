"""End-to-end benchmark: one network on the chip model, the Verilator sim device, Brian2 and plain
numpy, plus the two demos' accuracies.

    python bench/e2e.py [--json FILE] [--steps 1000] [--no-sim] [--no-brian2] [--no-demos] [--quick]

``--quick`` (the test suite runs it): 100 steps on the model and numpy only (no sim device, no
Brian2, no demos).

The network (:func:`make_network`, seeded): ``N = 1000`` LIF neurons (80 % excitatory, 20 %
inhibitory), 10 % random recurrent connectivity, ``INPUTS = 100`` Poisson input channels
(spike probability ``INPUT_RATE`` per step) with 10 % random connectivity onto the neurons;
chip units: ``tau_mem = 20`` steps, threshold 1024, reset to 0, refractory 2 steps, int8 weights
(exponent 0), one step of synaptic delay. Every simulator runs ``steps`` steps of the same input
raster.

* ``model``: :class:`~neurofabric.host.model.ChipModel` through ``Chip.open("model")``, one core of
  1000 neurons and 1100 axons (a dense crossbar, so every event costs a full row on the chip).
* ``numpy``: an event-driven integer re-implementation of the same arithmetic (CSR fan-out,
  ``np.bincount``): its spikes must equal the model's (``spikes_identical``).
* ``sim``: ``Chip.open("sim")`` with the same shape; any failure is recorded as its error string.
* ``brian2``: the float equivalent (``dv/dt = -v/tau``, ``on_pre: v += w``, delay one step),
  C++ standalone if it compiles, else the numpy target; "unavailable" if brian2 is not
  importable. Compilation time is reported separately from the run time. Brian2 is the optional
  extra ``neurofabric[brian2]``; it pins ``numpy<2.4`` (Brian2 2.9 calls ``ndarray.ptp``, which
  numpy 2.4 removed), so install it in a venv of its own:
  ``python -m venv b2 && b2/bin/pip install -e ".[sim,demo,brian2]" && b2/bin/python bench/e2e.py``.

Synaptic events: every input event and spike times its number of non-zero outgoing synapses
(each simulator's own spikes). ``events_per_s`` = synaptic events / time of the run: wall time
of ``Chip.run`` for the chip devices (network loading excluded, ``setup_s``), of the step loop
for numpy, and Brian2's own measurement of its simulation loop for C++ standalone (the wall
time around the compiled program, ``events_per_s_wall``, includes its start-up and file output).

Projected chip rate on ECP5-85F: cycles per step from the core's measured figures
(docs/bench/core.json: an event costs ``N_core / P`` cycles per core, the update sweep
``sweep_cycles``; cores work in parallel, each holding every axon) for the 1000 neurons spread
over 4 cores of 250 at P = 16, times the routed Fmax (docs/bench/core.json ``ecp5_85f``). When
the sim device runs, its measured clock cycles per step are reported too (they include the host
link's traffic).

Also: ``digits_accuracy`` (demos/digits.py ``run_demo`` on the model, all 540 test images),
``model_agreement`` (the same demo on the sim device against the model, if the sim device runs)
and ``stdp_accuracy`` (demos/learning.py ``run_learn_demo`` on the model, its default there:
learning from uniform random weights with the core's winner-take-all, ``RANDOM``).
``model_events_per_s`` and ``numpy_events_per_s``: the two rates of this run side by side.

The convolutional digits demo (demos/conv.py ``run_conv_demo``, a NIR Conv2d + SumPool2d +
Affine IF network on ``conv_shape()``): ``conv_digits_accuracy`` on the model (the 540 test
images, or ``--conv-limit``), ``conv_model_agreement`` (share of samples with identical spikes on
the sim device and the model, ``--conv-sim-timeout``), and its synaptic memory:
``conv_kernel_words`` (every kernel and dense weight stored once, what a shared-weight mapping
needs), ``conv_dense_words`` (the dense crossbar words the chip holds today) and
``conv_synapses`` (non-zero synapses of the lowered network).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

N = 1000
EXCITATORY = 800
INPUTS = 100
CONNECTIVITY = 0.1
INPUT_RATE = 0.1
TAU_MEM = 20
THRESHOLD = 1024
REFRACTORY = 2
W_INPUT, W_EXC, W_INH = 60, 40, -127
ROOT = Path(__file__).resolve().parent.parent


def make_network(seed=0):
    """(w_in (INPUTS, N), w_rec (N, N)) int64 weights and a (steps_max=1 << 14)-independent RNG
    seed for the input raster."""
    rng = np.random.default_rng(seed)
    w_in = np.where(rng.random((INPUTS, N)) < CONNECTIVITY, W_INPUT, 0).astype(np.int64)
    w_rec = np.where(rng.random((N, N)) < CONNECTIVITY, 1, 0).astype(np.int64)
    np.fill_diagonal(w_rec, 0)
    w_rec[:EXCITATORY] *= W_EXC
    w_rec[EXCITATORY:] *= W_INH
    return w_in, w_rec


def input_raster(steps, seed=1):
    return np.random.default_rng(seed).random((steps, INPUTS)) < INPUT_RATE


def synaptic_events(input_counts, spike_counts, w_in, w_rec):
    """Input events and spikes (per channel / neuron) times their non-zero fan-out."""
    return int(input_counts @ np.count_nonzero(w_in, axis=1) + spike_counts @ np.count_nonzero(w_rec, axis=1))


def chip_network(w_in, w_rec):
    from neurofabric.host import LIF, Network
    net = Network()
    inp = net.input(INPUTS, name="poisson")
    pop = net.population(N, LIF(threshold=THRESHOLD, tau_mem=TAU_MEM, refractory=REFRACTORY), name="lif")
    net.connect(inp, pop, weights=w_in)
    net.connect(pop, pop, weights=w_rec)
    return net, inp, pop


def chip_shape():
    from neurofabric.host.model import ChipShape
    return ChipShape(cores=1, neurons=N, axons=INPUTS + N, lanes=8, route_entries=2 * N)


def run_chip(device, raster, w_in, w_rec, **options):
    """Run on a Chip device; returns a result dict with the (step, neuron) spikes."""
    from neurofabric.host import Chip
    t0 = time.perf_counter()
    chip = Chip.open(device, shape=chip_shape(), **options)
    try:
        net, inp, pop = chip_network(w_in, w_rec)
        chip.load(net, record=[pop])
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = chip.run({inp: raster}, steps=len(raster))
        wall = time.perf_counter() - t0
        spikes = result.spikes(pop)
        cycles = None
        backend = chip.backend
    finally:
        chip.close()
    if hasattr(backend, "device"):      # the sim device prints its cycle count when it exits
        cycles = backend.device.cycles()
    return {"spikes": spikes, "wall_s": wall, "setup_s": t_open, "cycles": cycles}


def run_numpy(raster, w_in, w_rec):
    """Event-driven integer LIF with the chip's arithmetic (docs/semantics.md), CSR fan-out."""
    dv = round(4096 / TAU_MEM)

    def csr(w):
        rows = [np.flatnonzero(r) for r in w]
        ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        idx = np.concatenate(rows)
        return ptr, idx, w[np.repeat(np.arange(len(w)), np.diff(ptr)), idx]

    in_ptr, in_idx, in_w = csr(w_in)
    rec_ptr, rec_idx, rec_w = csr(w_rec)

    def fan_out(ptr, idx, weights, sources):
        if not len(sources):
            return np.zeros(N, dtype=np.int64)
        starts, ends = ptr[sources], ptr[sources + 1]
        lengths = ends - starts
        pos = np.repeat(ends - np.cumsum(lengths), lengths) + np.arange(lengths.sum())
        return np.bincount(idx[pos], weights=weights[pos], minlength=N).astype(np.int64)

    t0 = time.perf_counter()
    v = np.zeros(N, dtype=np.int64)
    refractory = np.zeros(N, dtype=np.int64)
    fired = np.zeros(0, dtype=np.int64)
    out = []
    for t in range(len(raster)):
        u = fan_out(in_ptr, in_idx, in_w, np.flatnonzero(raster[t])) + fan_out(rec_ptr, rec_idx, rec_w, fired)
        active = refractory == 0
        v_new = np.abs(v) * (4096 - dv) >> 12
        v_new = np.clip(np.where(v < 0, -v_new, v_new) + u, -(1 << 23), (1 << 23) - 1)
        spike = active & (v_new >= THRESHOLD)
        v = np.where(spike, 0, np.where(active, v_new, v))
        refractory = np.where(spike, REFRACTORY, np.where(active, 0, refractory - 1))
        fired = np.flatnonzero(spike)
        out.extend((t, int(n)) for n in fired)
    wall = time.perf_counter() - t0
    return {"spikes": np.array(out, dtype=np.int64).reshape(-1, 2), "wall_s": wall}


def run_brian2(raster, w_in, w_rec, standalone=True):
    """The float equivalent in Brian2; returns spikes as (step, neuron)."""
    import brian2 as b2
    b2.start_scope()
    workdir = tempfile.mkdtemp(prefix="nf_brian2_")
    if standalone:
        b2.set_device("cpp_standalone", directory=workdir, build_on_run=False)
    else:
        b2.set_device("runtime")
        b2.prefs.codegen.target = "numpy"
    dt = 1 * b2.ms
    b2.defaultclock.dt = dt
    steps = len(raster)
    tau = TAU_MEM * dt
    group = b2.NeuronGroup(N, "dv/dt = -v / tau : 1 (unless refractory)", threshold=f"v >= {THRESHOLD}",
                           reset="v = 0", refractory=REFRACTORY * dt, method="exact",
                           namespace={"tau": tau})
    t_idx, i_idx = np.nonzero(raster)
    source = b2.SpikeGeneratorGroup(INPUTS, i_idx, t_idx * dt)
    s_in = b2.Synapses(source, group, "w : 1", on_pre="v_post += w", delay=0 * dt)
    pre, post = np.nonzero(w_in)
    s_in.connect(i=pre, j=post)
    s_in.w = w_in[pre, post]
    s_rec = b2.Synapses(group, group, "w : 1", on_pre="v_post += w", delay=dt)
    pre, post = np.nonzero(w_rec)
    s_rec.connect(i=pre, j=post)
    s_rec.w = w_rec[pre, post]
    monitor = b2.SpikeMonitor(group)
    t0 = time.perf_counter()
    b2.run(steps * dt)
    if standalone:
        b2.device.build(directory=workdir, compile=True, run=False)
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        b2.device.run(directory=workdir)
        wall = time.perf_counter() - t0
        # the wall time of the simulation loop itself, as Brian2 measures it
        loop = float(b2.device._last_run_time) if getattr(b2.device, "_last_run_time", None) else None
    else:
        wall, t_compile, loop = time.perf_counter() - t0, 0.0, None
    spikes = np.stack([np.round(np.asarray(monitor.t / dt)).astype(np.int64),
                       np.asarray(monitor.i, dtype=np.int64)], axis=1)
    b2.device.reinit()
    b2.device.activate()
    b2.set_device("runtime")
    return {"spikes": spikes, "wall_s": wall, "compile_s": t_compile, "loop_s": loop,
            "target": "cpp_standalone" if standalone else "numpy"}


def _worker(args, timeout, what):
    """Run this script with `args` in its own process group (so a timeout also stops a Verilator
    build it started); raise with the last line of its stderr if it fails."""
    import signal
    import subprocess
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{what} took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        # the failing line of the traceback and the error
        raise RuntimeError(" | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
                           if stderr.strip() else f"exit status {proc.returncode}")


def run_sim_elsewhere(raster, w_in, w_rec, timeout):
    """:func:`run_chip` on the sim device in a subprocess, so a build that takes too long can be
    stopped after `timeout` seconds (the error then says so)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/in.npz", raster=raster, w_in=w_in, w_rec=w_rec)
        _worker(["--sim-worker", tmp], timeout, f"building and running the sim device for shape {chip_shape()}")
        data = np.load(f"{tmp}/out.npz", allow_pickle=False)
        result = json.loads(str(data["meta"]))
        result["spikes"] = data["spikes"]
        return result


def projected_chip(spikes, raster, w_in, w_rec, steps, cores=4, lanes=16):
    """Cycles per step and synaptic events per second on ECP5-85F from the core's measured
    figures (docs/bench/core.json); None if that file is missing."""
    path = ROOT / "docs" / "bench" / "core.json"
    if not path.exists():
        return None
    core = json.loads(path.read_text())
    ecp5 = core["ecp5_85f"]
    per_core = -(-N // cores)
    events = raster.sum(axis=1).astype(np.int64)
    counts = np.bincount(spikes[:, 0], minlength=steps)[:steps] if len(spikes) else np.zeros(steps, np.int64)
    # every input event and spike reaches every core (each core holds all axons): a row of
    # per_core weights at `lanes` per cycle, in parallel across cores; then the update sweep
    # (measured 269 cycles for 256 neurons: N + 13)
    sweep = core["lanes"][str(ecp5["lanes"])]["sweep_cycles"] - core["neurons"] + per_core
    row = -(-per_core // lanes)
    cycles = (events + counts) * row + sweep
    total_cycles = int(cycles.sum())
    seconds = total_cycles / (ecp5["fmax_mhz"] * 1e6)
    syn = synaptic_events(raster.sum(axis=0), np.bincount(spikes[:, 1], minlength=N), w_in, w_rec)
    return {"cores": cores, "neurons_per_core": per_core, "lanes": lanes, "fmax_mhz": ecp5["fmax_mhz"],
            "cycles_per_step": total_cycles / steps, "steps_per_s": steps / seconds,
            "events_per_s": syn / seconds, "crossbar_ops_per_s": int(((events + counts) * per_core * cores).sum())
            / seconds,
            "note": "integration (events x N/P per core, cores in parallel) + update sweep per step; router "
                    "and barrier overheads not included; a 1100 x 250 int8 crossbar per core (4 x 275 KB) "
                    "exceeds the 85F's 468 KB of block RAM, so this is the rate of the architecture, not of "
                    "a build that fits this network"}


def _error(e):
    return f"{type(e).__name__}: {e}".strip()[:2000]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--no-sim", action="store_true", help="skip the Verilator sim device")
    parser.add_argument("--no-brian2", action="store_true")
    parser.add_argument("--no-demos", action="store_true", help="skip the digits and STDP demos")
    parser.add_argument("--quick", action="store_true", help="100 steps, model and numpy only")
    parser.add_argument("--sim-worker", help=argparse.SUPPRESS)
    parser.add_argument("--demo-sim-worker", help=argparse.SUPPRESS)
    parser.add_argument("--sim-timeout", type=float, default=300.0,
                        help="seconds allowed for building and running the sim device (default 300)")
    parser.add_argument("--conv-limit", type=int, default=None, help="test images for the conv demo (default all)")
    parser.add_argument("--conv-sim-timeout", type=float, default=3600.0,
                        help="seconds allowed for the conv demo on the sim device (default 3600)")
    parser.add_argument("--conv-sim-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.no_sim, args.no_brian2, args.no_demos = min(args.steps, 100), True, True, True
    if args.conv_sim_worker:
        from neurofabric.demos.conv import run_conv_demo
        run_conv_demo(device="sim", out_dir=args.conv_sim_worker, limit=args.conv_limit, progress=False,
                      log=lambda m: None)
        return 0
    if args.demo_sim_worker:
        from neurofabric.demos.digits import run_demo
        run_demo(device="sim", out_dir=args.demo_sim_worker, progress=False, log=lambda m: None)
        return 0
    if args.sim_worker:
        data = np.load(f"{args.sim_worker}/in.npz")
        result = run_chip("sim", data["raster"], data["w_in"], data["w_rec"])
        spikes = result.pop("spikes")
        np.savez(f"{args.sim_worker}/out.npz", spikes=spikes, meta=json.dumps(result))
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    w_in, w_rec = make_network()
    raster = input_raster(args.steps)
    input_counts = raster.sum(axis=0)
    out = {"network": {"neurons": N, "excitatory": EXCITATORY, "inputs": INPUTS, "connectivity": CONNECTIVITY,
                       "input_rate": INPUT_RATE, "steps": args.steps, "tau_mem": TAU_MEM, "threshold": THRESHOLD,
                       "weights": [W_INPUT, W_EXC, W_INH], "synapses": int(np.count_nonzero(w_in)
                                                                         + np.count_nonzero(w_rec))},
           "cpu_count": os.cpu_count()}
    results = {}

    def record(name, r):
        spikes = r.pop("spikes")
        r["spikes"] = int(len(spikes))
        r["synaptic_events"] = synaptic_events(input_counts, np.bincount(spikes[:, 1], minlength=N), w_in, w_rec)
        # Brian2 standalone: the simulation loop's own time (its wall time includes starting the
        # compiled program and writing results)
        seconds = r.get("loop_s") or r["wall_s"]
        r["events_per_s"] = r["synaptic_events"] / seconds if seconds else None
        r["events_per_s_wall"] = r["synaptic_events"] / r["wall_s"] if r["wall_s"] else None
        r["rate_per_neuron_per_step"] = len(spikes) / (N * args.steps)
        results[name] = r
        log(f"{name}: {r['spikes']} spikes, {r['synaptic_events']} synaptic events in {seconds:.3f} s "
            f"= {r['events_per_s'] / 1e6:.2f} M/s")
        return spikes

    log("model ...")
    model_spikes = record("model", run_chip("model", raster, w_in, w_rec))
    log("numpy ...")
    numpy_spikes = record("numpy", run_numpy(raster, w_in, w_rec))
    results["numpy"]["spikes_identical_to_model"] = bool(
        np.array_equal(np.unique(numpy_spikes, axis=0), np.unique(model_spikes, axis=0)))

    if args.no_sim:
        results["sim"] = {"error": "skipped (--no-sim)"}
    else:
        log("sim ...")
        try:
            sim_spikes = record("sim", run_sim_elsewhere(raster, w_in, w_rec, args.sim_timeout))
            results["sim"]["spikes_identical_to_model"] = bool(np.array_equal(sim_spikes, model_spikes))
            if results["sim"]["cycles"]:
                results["sim"]["cycles_per_step"] = results["sim"]["cycles"] / args.steps
        except Exception as e:  # record and continue: the benchmark reports what runs here
            results["sim"] = {"error": _error(e)}
            log(f"sim: {results['sim']['error']}")

    if args.no_brian2:
        results["brian2"] = "skipped (--no-brian2)"
    else:
        try:
            import brian2  # noqa: F401
        except Exception as e:     # not installed, or broken under this numpy
            results["brian2"] = "unavailable"
            results["brian2_import_error"] = _error(e)
        else:
            log("brian2 ...")
            try:
                record("brian2", run_brian2(raster, w_in, w_rec, standalone=True))
            except Exception as e:
                log(f"brian2 C++ standalone failed ({_error(e)}); numpy target")
                try:
                    record("brian2", run_brian2(raster, w_in, w_rec, standalone=False))
                    results["brian2"]["standalone_error"] = _error(e)
                except Exception as e2:
                    results["brian2"] = {"error": _error(e2), "standalone_error": _error(e)}
    out["results"] = results
    out["chip_projected_ecp5_85f"] = projected_chip(model_spikes, raster, w_in, w_rec, args.steps)

    out["model_events_per_s"] = results["model"]["events_per_s"]
    out["numpy_events_per_s"] = results["numpy"]["events_per_s"]
    rates = {k: v["events_per_s"] for k, v in results.items() if isinstance(v, dict) and v.get("events_per_s")}
    if out["chip_projected_ecp5_85f"]:
        rates["chip_ecp5_85f_projected"] = out["chip_projected_ecp5_85f"]["events_per_s"]
    out["events_per_s"] = rates
    out["ratios"] = {f"{a}/{b}": rates[a] / rates[b] for a in rates for b in rates if a != b
                     and (a == "chip_ecp5_85f_projected" or b == "model")}

    if not args.no_demos:
        from neurofabric.demos.digits import run_demo
        from neurofabric.demos.learning import run_learn_demo
        with tempfile.TemporaryDirectory() as tmp:
            log("digits demo on the model ...")
            try:
                s = run_demo(device="model", out_dir=f"{tmp}/demo", progress=False, log=lambda m: None)
                out["digits_accuracy"] = s["accuracy"]
                out["digits_demo"] = {k: s[k] for k in ("samples", "steps", "accuracy", "float_accuracy",
                                                        "chip_wall_s", "synaptic_events_per_s")}
            except Exception as e:
                out["digits_accuracy"] = {"error": _error(e)}
            if args.no_sim:
                out["model_agreement"] = "skipped (--no-sim)"
            else:
                log("digits demo on the sim device, against the model ...")
                try:
                    _worker(["--demo-sim-worker", f"{tmp}/demo_sim"], args.sim_timeout,
                            "the digits demo on the sim device")
                    s = json.loads(Path(f"{tmp}/demo_sim/summary.json").read_text())
                    out["model_agreement"] = s["model_agreement"]
                    out["model_agreement_samples"] = s["samples"]
                except Exception as e:
                    out["model_agreement"] = {"error": _error(e)}
            log("conv digits demo on the model ...")
            try:
                from neurofabric.demos.conv import run_conv_demo
                s = run_conv_demo(device="model", limit=args.conv_limit, progress=False, log=lambda m: None)
                out["conv_digits_accuracy"] = s["accuracy"]
                out["conv_kernel_words"] = s["memory"]["kernel_words"]
                out["conv_dense_words"] = s["memory"]["dense_words"]
                out["conv_synapses"] = s["memory"]["synapses"]
                out["conv_digits_demo"] = {k: s[k] for k in ("samples", "steps", "channels", "percentile", "accuracy",
                                                             "float_accuracy", "weight_exp", "chip_wall_s")}
            except Exception as e:
                out["conv_digits_accuracy"] = {"error": _error(e), "traceback": traceback.format_exc()[-1500:]}
            if args.no_sim:
                out["conv_model_agreement"] = "skipped (--no-sim)"
            else:
                log("conv digits demo on the sim device, against the model ...")
                try:
                    _worker(["--conv-sim-worker", f"{tmp}/conv_sim"]
                            + ([] if args.conv_limit is None else ["--conv-limit", str(args.conv_limit)]),
                            args.conv_sim_timeout, "the conv digits demo on the sim device")
                    s = json.loads(Path(f"{tmp}/conv_sim/summary.json").read_text())
                    out["conv_model_agreement"] = s["model_agreement"]
                    out["conv_model_agreement_samples"] = s["samples"]
                    out["conv_sim_accuracy"] = s["accuracy"]
                except Exception as e:
                    out["conv_model_agreement"] = {"error": _error(e)}
            log("STDP learning demo on the model ...")
            try:
                s = run_learn_demo(device="model", out_dir=f"{tmp}/learn", progress=False, log=lambda m: None)
                out["stdp_accuracy"] = s["accuracy"]
                out["stdp_demo"] = {k: s[k] for k in ("train_images", "test_images", "accuracy", "train_accuracy",
                                                      "total_wall_s")}
            except Exception as e:
                out["stdp_accuracy"] = {"error": _error(e), "traceback": traceback.format_exc()[-1500:]}

    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
