"""The ``neurofabric`` command line.

- ``neurofabric info [--device D]``: identify the chip (version, shape, build).
- ``neurofabric run [--device D] [--network FILE.npz|builtin] [--steps N]``: load a small
  network and run it; prints spike counts and the chip's counters.
- ``neurofabric demo [--device D] [--steps T] [--out DIR]``: the digits demo (demos/digits.py).
- ``neurofabric demo --learn [--quick] [--device D] [--out DIR]``: unsupervised STDP learning of
  the digits (demos/learning.py; the Verilator sim device by default). ``--device model`` learns
  from uniform random weights with the model's k-winner-take-all and rest-time normalisation; the
  sim device and boards, whose gateware has no winner-take-all yet, keep the exemplar start.
- ``neurofabric sim-server ...``: start the Verilator sim device (neurofabric.sim.device); it
  prints ``port N`` (connect to ``socket://127.0.0.1:N``).
- ``neurofabric build --board NAME [...]``, ``neurofabric program --board NAME``,
  ``neurofabric boards``: bitstreams (neurofabric.boards.build).

This module sits above the subpackages (it composes host, sim and boards), which is why it is
``neurofabric.cli`` and not part of ``neurofabric.host``.

Devices: ``model`` (the numpy model), ``sim`` (the Verilator sim device), ``serial://PORT``,
``socket://HOST:PORT``. Exit status 0 on success, 1 on a chip or validation error, 2 on usage.
"""

import argparse
import sys

import numpy as np

__all__ = ["main", "builtin_network", "load_network_file"]


def builtin_network(seed=0):
    """A small 32-input, 64-LIF, 8-output network with random weights (deterministic)."""
    from neurofabric.host.network import LIF, Network
    rng = np.random.default_rng(seed)
    net = Network()
    inp = net.input(32, name="input")
    hid = net.population(64, LIF(threshold=1000, tau_mem=16), name="hidden")
    out = net.population(8, LIF(threshold=800, tau_mem=8), name="output")
    net.connect(inp, hid, weights=rng.normal(300, 300, (32, 64)))
    net.connect(hid, out, weights=rng.normal(100, 200, (64, 8)))
    rates = rng.uniform(0.05, 0.3, 32)
    return net, inp, rates


def load_network_file(path):
    """A feed-forward network from an .npz file: arrays ``w0, w1, ...`` (in, out) in state
    units, optional ``b0, b1, ...`` biases, optional ``threshold`` (one per layer) and
    ``rates`` (input spike probability per step, default 0.2). Layers are IF neurons with
    reset by subtraction."""
    from neurofabric.host.network import IF, Network, ValidationError
    data = np.load(path)
    layers = sorted((k for k in data.files if k.startswith("w") and k[1:].isdigit()), key=lambda k: int(k[1:]))
    if not layers:
        raise ValidationError(f"{path}: no weight arrays w0, w1, ... found (has {data.files})", "network", path,
                              ("an .npz with w0, w1, ...",))
    thresholds = data["threshold"] if "threshold" in data.files else [1024] * len(layers)
    net = Network()
    prev = inp = net.input(data[layers[0]].shape[0], name="input")
    for i, key in enumerate(layers):
        w = data[key]
        bias = data[f"b{i}"] if f"b{i}" in data.files else 0
        pop = net.population(w.shape[1], IF(threshold=int(thresholds[i])), bias=bias, name=f"layer{i}")
        net.connect(prev, pop, weights=w)
        prev = pop
    rates = data["rates"] if "rates" in data.files else np.full(inp.size, 0.2)
    return net, inp, rates


def _info(args):
    from neurofabric.host.chip import open_backend
    backend = open_backend(args.device)
    try:
        info = backend.identify()
    finally:
        backend.close()
    print(f"device {args.device}: build {info.build or '?'}, version {info.version}")
    print(f"  {info.cores} core(s) x {info.neurons} neurons x {info.axons} axons, {info.lanes} lanes")
    print(f"  {info.route_entries} route entries, input queue {info.input_queue} events")
    print(f"  learning {'yes' if info.learning else 'no'}, input encoder "
          f"{f'{info.encoder_channels} channels' if info.encoder_channels else 'none'}")
    return 0


def _run(args):
    from neurofabric.host.chip import Chip
    from neurofabric.host.encoding import bernoulli_encode
    net, inp, rates = builtin_network(args.seed) if args.network == "builtin" else load_network_file(args.network)
    events = bernoulli_encode(np.asarray(rates, dtype=np.float64), args.steps, seed=args.seed)
    with Chip.open(args.device) as chip:
        compiled = chip.load(net)
        print(compiled.summary())
        result = chip.run({inp: events}, steps=args.steps, progress=args.progress or None)
        for pop in result.recorded:
            counts = result.counts(pop)
            print(f"{pop.name}: {int(counts.sum())} spikes over {args.steps} steps; per neuron "
                  f"min {counts.min()} mean {counts.mean():.2f} max {counts.max()}")
        print("counters:", ", ".join(f"{k}={v}" for k, v in chip.stats().items()))
    return 0


def _demo(args):
    if args.learn:
        from neurofabric.demos.learning import format_learn_summary, run_learn_demo
        out = args.out or "build/learn_demo"
        summary = run_learn_demo(device=args.device or "sim", out_dir=out, quick=args.quick,
                                 progress=False if args.quiet else True)
        print(format_learn_summary(summary))
        print(f"wrote {out}/receptive_fields.png, weights.npz, summary.json")
        return 0
    if args.quick:
        from neurofabric.host.network import ValidationError
        raise ValidationError("--quick applies to demo --learn only", "quick", True, ("--quick with --learn",))
    args.device, args.out = args.device or "sim", args.out or "build/demo"
    from neurofabric.demos.digits import format_summary, run_demo
    summary = run_demo(device=args.device, steps=args.steps, hidden=args.hidden, out_dir=args.out,
                       limit=args.limit, compare=not args.no_compare, progress=False if args.quiet else True)
    print(format_summary(summary))
    print(f"wrote {args.out}/raster.png, confusion.png, summary.json")
    return 0


#: Subcommands whose arguments pass through to another module's main(argv):
#: name -> (module, leading arguments, help)
PASS_THROUGH = {
    "sim-server": ("neurofabric.sim.device", [], "start the Verilator sim device; prints 'port N' "
                   "(connect to socket://127.0.0.1:N; --help for its options)"),
    "build": ("neurofabric.boards.build", ["build"], "build a bitstream: build --board NAME [chip options]"),
    "program": ("neurofabric.boards.build", ["program"], "program a board with openFPGALoader"),
}


def _pass_through(name, rest):
    module_name, lead, _ = PASS_THROUGH[name]
    import importlib
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        print(f"neurofabric {name}: {module_name} is not available: {e}", file=sys.stderr)
        return 1
    if name == "sim-server":
        return module.main(rest, prog="neurofabric sim-server") or 0
    return module.main([*lead, *rest]) or 0


def _boards(args):
    from neurofabric.boards.build import main as boards_main
    return boards_main(["list"])


def build_parser():
    parser = argparse.ArgumentParser(prog="neurofabric", description="neurofabric host tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="identify the chip at --device")
    p.add_argument("--device", default="model", help="model, sim, serial://PORT or socket://HOST:PORT")
    p.set_defaults(func=_info)

    p = sub.add_parser("run", help="load a small network (built-in or .npz) and run it")
    p.add_argument("--device", default="model")
    p.add_argument("--network", default="builtin", help="'builtin' or an .npz file (see docs/host.md)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="ANN->SNN digits classification on the chip (--learn: STDP learning)")
    p.add_argument("--device", default=None, help="model, sim (the default) or a board URL")
    p.add_argument("--steps", type=int, default=16, help="input time steps per sample (T)")
    p.add_argument("--hidden", type=int, default=128, help="hidden layer size")
    p.add_argument("--out", default=None,
                   help="output folder for the plots and summary.json (default build/demo, build/learn_demo)")
    p.add_argument("--limit", type=int, default=None, help="classify only the first N test samples")
    p.add_argument("--no-compare", action="store_true", help="skip the spike comparison with the model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--learn", action="store_true", help="unsupervised STDP learning demo (demos/learning.py)")
    p.add_argument("--quick", action="store_true", help="with --learn: a small, fast configuration")
    p.set_defaults(func=_demo)

    p = sub.add_parser("boards", help="list the supported boards")
    p.set_defaults(func=_boards)

    for name, (_, _, help_text) in PASS_THROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False).set_defaults(func=None)
    return parser


def main(argv=None):
    from neurofabric.host.backend import BackendError
    from neurofabric.host.network import ValidationError
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in PASS_THROUGH:
        return _pass_through(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValidationError, BackendError, ValueError, OSError) as e:
        print(f"neurofabric {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
