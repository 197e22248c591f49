"""NIR (Neuromorphic Intermediate Representation, nir 1.0.x) import and export.

Import (:func:`from_nir`) turns a NIR graph into a :class:`Network`; export (:func:`to_nir`)
does the reverse. Supported nodes: ``Input``, ``Output``, ``Affine``, ``Linear``, ``Scale``
(synapse chains ``[Scale]* (Affine|Linear) [Scale]*`` between a source and a neuron node),
``LIF``, ``CubaLIF``, ``IF``, and ``LI`` (a leaky readout that never fires; read its membrane
with :meth:`Chip.read_state`). Anything else is rejected with an error that names the node and
says what to change.

Discretisation: forward Euler with step `dt` (in the graph's time unit), the NIR equations:

- ``LIF``: ``v += dt/tau * (v_leak - v) + dt*r/tau * I``  -> ``dv = round(4096*dt/tau)``,
  input gain ``dt*r/tau`` folded into the weights, ``v_leak`` into the bias;
- ``IF``: ``v += dt*r * I`` -> ``dv = 0``, gain ``dt*r``;
- ``CubaLIF``: ``I += dt/tau_syn * (w_in*S - I)``, ``v += dt/tau_mem * (v_leak - v) + dt*r/tau_mem * I``
  -> ``du = round(4096*dt/tau_syn)``, gain ``w_in * dt/tau_syn * dt*r/tau_mem``;
- ``LI``: like LIF with an unreachable threshold.

Exporters disagree on ``r`` (design.md section 4): snnTorch writes ``r = tau/dt`` (so the gain is
1, as its discrete model has), Norse ``r = 1``, Sinabs/Rockpool time constants in steps. The
`gain` argument selects how the input gain is computed: ``"nir"`` (the equations above),
``"r"`` (the gain is ``r`` itself, for discrete-time exporters) or ``"unit"`` (gain 1).
NIR neurons reset to ``v_reset``; many frameworks subtract the threshold: say which with
`reset` (a graph exported by :func:`to_nir` records its mode in its metadata).

Units: each population's potentials are scaled to chip state units by a factor chosen so that
the largest weight into it uses the full int8 range at ``weight_exp`` (``scale`` in the
returned report); thresholds are rounded to integers; the chip fires at ``v >= threshold``
where NIR says ``v > threshold``. Each hop between neuron populations takes one time step on
the chip; input events reach the first layer in the step they are sent.
"""

from dataclasses import dataclass

import numpy as np

from neurofabric.hdl.protocol import DECAY_ONE
from neurofabric.host.network import LIF, STATE_MAX, WEIGHT_MAX, Network, ValidationError

__all__ = ["NirError", "ImportReport", "from_nir", "to_nir", "read_nir", "write_nir"]

_SYNAPSE_NODES = ("Affine", "Linear", "Scale")
_NEURON_NODES = ("LIF", "CubaLIF", "IF", "LI")


class NirError(ValidationError):
    """A NIR graph (or a network to export) that the chip cannot represent."""


@dataclass(frozen=True)
class ImportReport:
    """What import did to each neuron node: {name: dict(scale, du, dv, threshold, tau_mem_effective,
    tau_syn_effective, tau_mem_requested, tau_syn_requested)}."""
    populations: dict
    inputs: dict        #: NIR input node name -> input Population
    outputs: dict       #: NIR output node name -> Population
    dt: float
    reset: str


def _text(value):
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _nir():
    try:
        import nir
    except ImportError as e:      # pragma: no cover - nir is a dependency of the NIR features
        raise NirError("NIR import/export needs the 'nir' package (pip install 'nir>=1.0,<1.1')") from e
    return nir


def _kind(node):
    return type(node).__name__


def _uniform(node_name, field, values):
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise NirError(f"node {node_name!r}: {field} is empty", field, values)
    if np.any(np.isnan(values)):
        raise NirError(f"node {node_name!r}: {field} contains NaN", field, values)
    if not np.allclose(values, values[0]):
        raise NirError(f"node {node_name!r}: {field} differs between neurons ({values.min()} .. {values.max()}); "
                       "a population has one value: split the node into groups with equal values", field, values)
    return float(values[0])


def _decay(node_name, field, tau, dt):
    if tau <= 0:
        raise NirError(f"node {node_name!r}: {field} = {tau} is out of range: allowed > 0", field, tau)
    if np.isinf(tau):
        return 0
    ratio = dt / tau
    if ratio > 1:
        raise NirError(f"node {node_name!r}: {field} = {tau} is shorter than dt = {dt}; forward Euler needs "
                       f"{field} >= dt: use a smaller dt", field, tau, (dt, np.inf))
    return int(round(DECAY_ONE * ratio))


def _gain(kind, node, dt, gain, name):
    """The per-neuron factor from a synapse output to the chip's u (before scaling)."""
    size = int(np.prod(np.asarray(node.output_type["output"])))
    if gain == "unit":
        return np.ones(int(size))
    r = np.asarray(node.r, dtype=np.float64).ravel()
    if gain == "r":
        g = r.copy()
    elif kind == "IF":
        g = dt * r
    elif kind == "CubaLIF":
        g = (dt / np.asarray(node.tau_syn, dtype=np.float64).ravel()) * dt * r / np.asarray(node.tau_mem).ravel()
    else:
        g = dt * r / np.asarray(node.tau, dtype=np.float64).ravel()
    if kind == "CubaLIF" and gain != "unit":
        g = g * np.asarray(node.w_in, dtype=np.float64).ravel()
    if not np.all(np.isfinite(g)):
        raise NirError(f"node {name!r}: the input gain is not finite (check r and tau)", "r", None)
    return g


def _chains(graph):
    """For every neuron / output node: a list of (source node name, [synapse node names])."""
    preds = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    result = {}
    for name, node in graph.nodes.items():
        if _kind(node) not in _NEURON_NODES + ("Output",):
            continue
        chains = []
        for first in preds.get(name, []):
            chain, cur, seen = [], first, set()
            while _kind(graph.nodes[cur]) in _SYNAPSE_NODES:
                if cur in seen:
                    raise NirError(f"node {cur!r}: a cycle of synapse nodes without a neuron", "edges", cur)
                seen.add(cur)
                chain.append(cur)
                ps = preds.get(cur, [])
                if len(ps) != 1:
                    raise NirError(f"node {cur!r} ({_kind(graph.nodes[cur])}) has {len(ps)} inputs; a synapse "
                                   "node needs exactly one (sum several sources at the neuron node instead)",
                                   "edges", cur)
                cur = ps[0]
            chains.append((cur, chain[::-1]))
        result[name] = chains
    return result


def _check_nodes(graph):
    for name, node in graph.nodes.items():
        kind = _kind(node)
        if kind not in _SYNAPSE_NODES + _NEURON_NODES + ("Input", "Output"):
            hint = {"Conv2d": "flatten the convolution into an Affine node",
                    "Conv1d": "flatten the convolution into an Affine node",
                    "Flatten": "remove it: neurofabric populations are flat vectors",
                    "CubaLI": "use LI (current-based readouts are not supported) or CubaLIF",
                    "Delay": "remove it: the chip has a fixed one-step delay between populations",
                    "NIRGraph": "flatten the subgraph into the top-level graph",
                    "Threshold": "merge it into a LIF/IF node", "I": "use IF or LI"}.get(kind, "")
            raise NirError(f"node {name!r}: {kind} is not supported by neurofabric"
                           + (f"; {hint}" if hint else "") + f" (supported: Input, Output, {', '.join(_SYNAPSE_NODES)}, "
                           f"{', '.join(_NEURON_NODES)})", "node", name)


def _topological(graph, names):
    """Neuron/input node names in an order where sources come first (recurrent edges ignored)."""
    chains = _chains(graph)
    deps = {n: {src for src, _ in chains.get(n, []) if src != n} for n in names}
    order, done = [], set()
    pending = list(names)
    while pending:
        progressed = False
        for n in list(pending):
            if deps[n] - done <= {d for d in deps[n] if d not in names}:
                order.append(n)
                done.add(n)
                pending.remove(n)
                progressed = True
        if not progressed:      # a cycle between populations: take the rest in file order
            order.extend(pending)
            break
    return order


def _synapse_matrix(graph, chain, in_size, name):
    """The dense (in, out) matrix and the bias vector of a synapse chain."""
    w = np.eye(in_size)
    bias = None
    for n in chain:
        node = graph.nodes[n]
        kind = _kind(node)
        if kind == "Scale":
            s = np.asarray(node.scale, dtype=np.float64).ravel()
            if s.size != w.shape[1]:
                raise NirError(f"node {n!r}: Scale of size {s.size} after a signal of size {w.shape[1]}", "scale", s.size)
            w = w * s
            bias = None if bias is None else bias * s
        else:
            m = np.asarray(node.weight, dtype=np.float64)
            if m.ndim != 2:
                raise NirError(f"node {n!r}: {kind} weight has shape {m.shape}; only 2-D (out, in) weights are "
                               "supported (flatten convolutions first)", "weight", m.shape)
            if m.shape[1] != w.shape[1]:
                raise NirError(f"node {n!r}: weight of shape {m.shape} takes {m.shape[1]} inputs but receives "
                               f"{w.shape[1]}", "weight", m.shape)
            w = w @ m.T
            bias = None if bias is None else bias @ m.T
            if kind == "Affine":
                b = np.asarray(node.bias, dtype=np.float64).ravel()
                bias = b if bias is None else bias + b
        if not np.all(np.isfinite(w)):
            raise NirError(f"node {n!r}: weights contain NaN or infinity", "weight", None)
    return w, bias


def from_nir(graph, dt=1.0, reset=None, gain="nir", weight_exp=4, scale=None):
    """A :class:`Network` from a NIR graph (or a path to a NIR HDF5 file).

    `dt`: the time step in the graph's time unit; `reset`: ``"value"`` (the NIR semantics) or
    ``"subtract"`` (default: the graph's ``neurofabric.reset`` metadata, else ``"value"``);
    `gain`: ``"nir"``, ``"r"`` or ``"unit"`` (module docstring); `scale`: state units per NIR
    potential unit, or None to choose one per population (largest weight = ``127 << weight_exp``;
    a graph written by :func:`to_nir` is already in state units and imports with scale 1).
    Returns ``(network, report)``.
    """
    nir = _nir()
    if isinstance(graph, (str, bytes)) or hasattr(graph, "__fspath__"):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise NirError(f"graph must be a nir.NIRGraph or a file path, not {graph!r}", "graph", graph)
    if not (isinstance(dt, (int, float)) and dt > 0 and np.isfinite(dt)):
        raise NirError(f"dt = {dt!r} is out of range: allowed > 0", "dt", dt)
    if gain not in ("nir", "r", "unit"):
        raise NirError(f"gain must be 'nir', 'r' or 'unit', not {gain!r}", "gain", gain)
    metadata = getattr(graph, "metadata", None) or {}
    if reset is None:
        reset = metadata.get("neurofabric.reset", "value") if isinstance(metadata, dict) else "value"
        reset = _text(reset)
    if reset not in ("value", "subtract"):
        raise NirError(f"reset must be 'value' or 'subtract', not {reset!r}", "reset", reset)
    if scale is None and isinstance(metadata, dict) and _text(metadata.get("neurofabric.units")) == "state":
        scale = 1.0
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0 and np.isfinite(scale)):
        raise NirError(f"scale = {scale!r} is out of range: allowed > 0", "scale", scale)
    fixed_scale = scale
    _check_nodes(graph)
    for a, b in graph.edges:
        for n in (a, b):
            if n not in graph.nodes:
                raise NirError(f"edge ({a!r}, {b!r}) names a node {n!r} that is not in the graph", "edges", n)
    chains = _chains(graph)
    sources = [n for n, node in graph.nodes.items() if _kind(node) in ("Input",) + _NEURON_NODES]
    order = _topological(graph, sources)

    net = Network()
    pops, sizes, report, inputs = {}, {}, {}, {}
    for name in order:
        node = graph.nodes[name]
        kind = _kind(node)
        if kind == "Input":
            shape = np.asarray(node.input_type["input"]).ravel()
            size = int(np.prod(shape))
            sizes[name] = size
            pops[name] = inputs[name] = net.input(size, name=name)
            continue
        size = int(np.asarray(node.output_type["output"]).prod())
        sizes[name] = size
        # decays
        if kind == "CubaLIF":
            tau_mem = _uniform(name, "tau_mem", node.tau_mem)
            tau_syn = _uniform(name, "tau_syn", node.tau_syn)
            dv, du = _decay(name, "tau_mem", tau_mem, dt), _decay(name, "tau_syn", tau_syn, dt)
        elif kind in ("LIF", "LI"):
            tau_mem, tau_syn = _uniform(name, "tau", node.tau), None
            dv, du = _decay(name, "tau", tau_mem, dt), DECAY_ONE
        else:   # IF
            tau_mem = tau_syn = None
            dv, du = 0, DECAY_ONE
        # incoming synapses, in chip-unit-free form: w_eff[i, j] = weight * gain_j
        g = _gain(kind, node, dt, gain, name)
        incoming, bias_in = [], np.zeros(size)
        for src, chain in chains.get(name, []):
            if src not in pops and src != name:
                raise NirError(f"node {name!r} receives from {src!r}, which is not an Input or neuron node",
                               "edges", src)
            src_size = sizes.get(src, size)
            w, b = _synapse_matrix(graph, chain, src_size, name)
            if w.shape[1] != size:
                raise NirError(f"node {name!r} has {size} neurons but the synapses from {src!r} give {w.shape[1]} "
                               "outputs", "weight", w.shape)
            if not chain:
                raise NirError(f"edge {src!r} -> {name!r} has no Affine/Linear node; insert a Linear (identity "
                               "weights) to say how strongly it connects", "edges", src)
            if b is not None and np.any(b != 0):
                if kind == "CubaLIF" and du != DECAY_ONE:
                    raise NirError(f"node {name!r}: an Affine bias into a CubaLIF with finite tau_syn is not "
                                   "supported (the chip adds bias to v, not to the current); use Linear and "
                                   "put the offset into v_leak", "bias", None)
                bias_in += b * g
            incoming.append((src, w * g))
        # v_leak -> bias per step (dt/tau * v_leak); IF has no leak
        if kind in ("LIF", "LI"):
            bias_in += dt / tau_mem * np.asarray(node.v_leak, dtype=np.float64).ravel()
        elif kind == "CubaLIF":
            bias_in += dt / tau_mem * np.asarray(node.v_leak, dtype=np.float64).ravel()
        if kind == "LI":
            threshold_nir, v_reset_nir = None, 0.0
        else:
            threshold_nir = _uniform(name, "v_threshold", node.v_threshold)
            v_reset_nir = _uniform(name, "v_reset", node.v_reset)
        peak = max([float(np.abs(w).max(initial=0.0)) for _, w in incoming] + [0.0])
        if fixed_scale is not None:
            scale = float(fixed_scale)
        else:
            scale = (WEIGHT_MAX << weight_exp) / peak if peak > 0 else 1.0
        if threshold_nir is not None and threshold_nir <= 0:
            raise NirError(f"node {name!r}: v_threshold = {threshold_nir} is out of range: allowed > 0", "v_threshold",
                           threshold_nir)
        if threshold_nir is not None and threshold_nir * scale > STATE_MAX:
            if fixed_scale is not None:
                raise NirError(f"node {name!r}: v_threshold * scale = {threshold_nir * scale} exceeds the 24-bit "
                               f"state ({STATE_MAX}); use a smaller scale", "scale", scale)
            scale = STATE_MAX / threshold_nir
        threshold = STATE_MAX if threshold_nir is None else max(1, int(round(threshold_nir * scale)))
        bias = np.round(bias_in * scale).astype(np.int64)
        neuron = LIF(threshold=threshold, dv=dv, du=du, reset=reset,
                     v_reset=int(round(v_reset_nir * scale)))
        pop = net.population(size, neuron, bias=bias, name=name)
        pops[name] = pop
        report[name] = {
            "kind": kind, "scale": scale, "du": du, "dv": dv, "threshold": threshold,
            "tau_mem_requested": tau_mem, "tau_mem_effective": None if tau_mem is None else
            (np.inf if dv == 0 else dt * DECAY_ONE / dv),
            "tau_syn_requested": tau_syn, "tau_syn_effective": None if tau_syn is None else
            (np.inf if du == 0 else dt * DECAY_ONE / du),
        }
        pop_incoming = [(src, w * scale) for src, w in incoming]
        report[name]["_incoming"] = pop_incoming
    # connections once every population exists (recurrent edges included)
    for name in order:
        for src, w in report.get(name, {}).pop("_incoming", []):
            net.connect(pops[src], pops[name], weights=w)
    outputs = {}
    for name, node in graph.nodes.items():
        if _kind(node) == "Output":
            for src, chain in chains.get(name, []):
                if chain:
                    raise NirError(f"output {name!r} is fed through {chain}; connect outputs directly to a "
                                   "neuron node", "edges", name)
                if src not in pops or pops[src].is_input:
                    raise NirError(f"output {name!r} must be fed by a neuron node, not {src!r}", "edges", src)
                outputs[name] = pops[src]
    return net, ImportReport(report, inputs, outputs, float(dt), reset)


def to_nir(network, dt=1.0, outputs=None, chip=None, compiled=None):
    """Export `network` as a ``nir.NIRGraph`` with the given `dt`.

    Weights are exported as the chip computes them: quantised to int8 << weight_exp, taken from
    `compiled` (a :class:`CompiledNetwork`), read back from `chip` (learned weights) or, if
    neither is given, the network's float weights. Potentials are in chip state units.
    `outputs`: populations to expose as Output nodes (default: those without outgoing
    connections). The metadata says the potentials are in state units, so :func:`from_nir` reads
    the graph back with scale 1 and gives the same chip configuration. Adaptive thresholds and refractory periods have no NIR equivalent and are
    rejected. The reset mode is recorded in the metadata (``neurofabric.reset``)."""
    nir = _nir()
    if not isinstance(network, Network):
        raise NirError(f"network must be a Network, not {network!r}", "network", network)
    if not (isinstance(dt, (int, float)) and dt > 0):
        raise NirError(f"dt = {dt!r} is out of range: allowed > 0", "dt", dt)
    pops = [p for p in network.populations if not p.is_input]
    resets = {p.neuron.reset for p in pops}
    if len(resets) > 1:
        raise NirError("populations use both reset modes; NIR metadata holds one: export them separately",
                       "reset", resets)
    nodes, edges = {}, []
    for p in network.populations:
        if p.is_input:
            nodes[p.name] = nir.Input(np.array([p.size]))
    for p in pops:
        n = p.neuron
        if n.theta_plus or n.refractory:
            raise NirError(f"population {p.name!r}: adaptive thresholds (theta_plus) and refractory periods have "
                           "no NIR equivalent; set them to 0 to export", "neuron", n)
        du, dv, _ = n.decays()
        ones = np.ones(p.size)
        threshold = n.threshold * ones
        v_reset = n.v_reset * ones
        incoming = [c for c in network.connections if c.post is p]
        bias = p.bias.astype(np.float64)
        if du == DECAY_ONE:
            if dv == 0:
                nodes[p.name] = nir.IF(r=ones / dt, v_threshold=threshold, v_reset=v_reset)
                leak_bias = False
            else:
                tau = dt * DECAY_ONE / dv
                nodes[p.name] = nir.LIF(tau=tau * ones, r=tau / dt * ones, v_leak=bias * tau / dt,
                                        v_threshold=threshold, v_reset=v_reset)
                leak_bias = True
            syn_gain = 1.0
        else:
            if dv == 0:
                raise NirError(f"population {p.name!r}: dv = 0 with du < 4096 (a current-based IF) has no NIR "
                               "node: CubaLIF needs a finite tau_mem; give the population a leak", "dv", 0)
            if du == 0:
                raise NirError(f"population {p.name!r}: du = 0 (a current that never decays) has no CubaLIF "
                               "equivalent", "du", 0)
            tau_syn = dt * DECAY_ONE / du
            tau_mem = dt * DECAY_ONE / dv
            nodes[p.name] = nir.CubaLIF(tau_syn=tau_syn * ones, tau_mem=tau_mem * ones, r=tau_mem / dt * ones,
                                        v_leak=bias * tau_mem / dt,
                                        v_threshold=threshold, v_reset=v_reset, w_in=ones)
            leak_bias = True
            syn_gain = tau_syn / dt
        if not leak_bias and np.any(bias != 0) and not incoming:
            raise NirError(f"population {p.name!r} has a bias but no input connection to carry it as an "
                           "Affine bias", "bias", None)
        for k, c in enumerate(incoming):
            w = _export_weights(c, chip, compiled) * syn_gain
            name = f"{c.pre.name}->{p.name}"
            if k == 0 and not leak_bias and np.any(bias != 0):
                nodes[name] = nir.Affine(weight=w.T.copy(), bias=bias.copy())
            else:
                nodes[name] = nir.Linear(weight=w.T.copy())
            edges += [(c.pre.name, name), (name, p.name)]
    if outputs is None:
        outputs = [p for p in pops if not any(c.pre is p for c in network.connections)]
    for p in outputs:
        name = f"output:{p.name}"
        nodes[name] = nir.Output(np.array([p.size]))
        edges.append((p.name, name))
    metadata = {"neurofabric.reset": resets.pop() if resets else "value", "neurofabric.dt": float(dt),
                "neurofabric.units": "state"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _export_weights(connection, chip, compiled):
    if chip is not None:
        return chip.read_weights(connection)
    if compiled is not None:
        e = [compiled.weight_exp[s.core] for s in compiled.slices_of(connection.post)]
        out = np.zeros_like(connection.weights)
        for s, exp in zip(compiled.slices_of(connection.post), e):
            q = np.clip(np.round(connection.weights[:, s.start:s.stop] / (1 << exp)), -128, 127)
            out[:, s.start:s.stop] = q * (1 << exp)
        return out
    return connection.weights.copy()


def read_nir(path, **kwargs):
    """:func:`from_nir` on a NIR HDF5 file."""
    return from_nir(_nir().read(path), **kwargs)


def write_nir(path, network, **kwargs):
    """Write :func:`to_nir` of `network` to a NIR HDF5 file."""
    _nir().write(path, to_nir(network, **kwargs))
