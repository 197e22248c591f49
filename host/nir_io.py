"""NIR (Neuromorphic Intermediate Representation, nir 1.0.x) import and export.

Import (:func:`from_nir`) turns a NIR graph into a :class:`Network`; export (:func:`to_nir`)
does the reverse; :func:`simulate_nir` is a float reference of a graph with the chip's timing.

Supported nodes: ``Input``, ``Output``; synapse chains between a source (``Input`` or a neuron
node) and a neuron node made of ``Affine``, ``Linear``, ``Scale``, ``Conv1d``, ``Conv2d``
(stride, padding incl. 'same'/'valid', dilation, groups), ``SumPool2d``, ``AvgPool2d`` (a sum
with the scale 1/area folded into the weights) and ``Flatten``; neuron nodes ``LIF``,
``CubaLIF``, ``IF``, ``Threshold`` (a stateless Heaviside: ``du = dv = 4096``) and the readouts
that never fire, ``LI``, ``CubaLI`` and ``I``; nested ``NIRGraph`` nodes are inlined (their
nodes are named ``subgraph.node``). ``Delay`` has no chip equivalent (every hop takes exactly one
step) and is rejected. Every construct the chip cannot take is listed in one :class:`NirError`,
each with the reason.

Convolution and pooling are lowered to the dense weight matrices the chip holds
(:mod:`neurofabric.host.lowering`); the projection keeps the operators and kernels in
``Connection.structure`` (state units), which export writes back as the original nodes.

Discretisation: forward Euler with step `dt` (in the graph's time unit), the NIR equations:

- ``LIF``: ``v += dt/tau * (v_leak - v) + dt*r/tau * I``  -> ``dv = round(4096*dt/tau)``,
  input gain ``dt*r/tau`` folded into the weights, ``v_leak`` into the bias;
- ``IF``/``I``: ``v += dt*r * I`` -> ``dv = 0``, gain ``dt*r``;
- ``CubaLIF``/``CubaLI``: ``I += dt/tau_syn * (w_in*S - I)``, ``v += dt/tau_mem * (v_leak - v) +
  dt*r/tau_mem * I`` -> ``du = round(4096*dt/tau_syn)``, gain ``w_in * dt/tau_syn * dt*r/tau_mem``;
  an ``Affine``/``Conv`` bias into it is added to ``v`` at its steady state (the chip's bias
  enters ``v``, not the current), which skips the first ~tau_syn of its rise (reported);
- ``Threshold``: ``z = v_in > threshold`` with no state;
- ``LI``: like LIF with an unreachable threshold.

Exporters disagree on ``r`` (design.md section 4): snnTorch writes ``r = tau/dt`` (so the gain is
1, as its discrete model has), Norse ``r = 1``, Sinabs/Rockpool time constants in steps. The
`gain` argument selects how the input gain is computed: ``"nir"`` (the equations above),
``"r"`` (the gain is ``r`` itself, for discrete-time exporters) or ``"unit"`` (gain 1).
NIR neurons reset to ``v_reset``; many frameworks subtract the threshold: say which with
`reset` (a graph exported by :func:`to_nir` records its mode in its metadata).

Units: each population's potentials are scaled to chip state units by a factor chosen so that
the largest weight into it uses the full int8 range at the weight exponent (``scale`` in the
returned report). The exponent is derived from the graph unless given: the largest (<= 15) for
which every population's threshold plus one step of its largest input fits the 24-bit state.
Thresholds become ``floor(v_threshold * scale) + 1``, so the chip's ``v >= threshold`` on the
integer state is NIR's ``v > v_threshold``. Each hop between neuron populations takes one time
step on the chip; input events reach the first layer in the step they are sent.
"""

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from neurofabric.hdl.protocol import DECAY_ONE, WEIGHT_EXP_MAX
from neurofabric.host import lowering
from neurofabric.host.network import LIF, STATE_MAX, WEIGHT_MAX, Network, ValidationError

__all__ = ["NirError", "ImportReport", "from_nir", "to_nir", "read_nir", "write_nir", "load_nir", "simulate_nir"]

_WEIGHTED = ("Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d")
_SYNAPSE_NODES = _WEIGHTED + ("Flatten", "_Pass")
_NEURON_NODES = ("LIF", "CubaLIF", "IF", "LI", "CubaLI", "I", "Threshold")
_SILENT = ("LI", "CubaLI", "I")          # neuron nodes without a threshold: readouts that never fire
_WHY = {
    "Delay": "the chip has no programmable synaptic delay: every hop between populations takes exactly one "
             "step; remove the node (or use a relay population per step of delay)",
    "NIRNode": "not a concrete NIR node",
}
#: steps over which an integrator without leak (NIR ``I``) is assumed to accumulate when the
#: weight exponent is chosen
_INTEGRATOR_HORIZON = 256


class NirError(ValidationError):
    """A NIR graph (or a network to export) that the chip cannot represent."""


@dataclass(frozen=True)
class ImportReport:
    """What import did. `populations`: {node name: dict(kind, scale, du, dv, threshold,
    tau_mem_requested, tau_mem_effective, tau_syn_requested, tau_syn_effective, bias_note)};
    `connections`: {(source, target): dict(ops, kernel_words, dense_words)}."""
    populations: dict
    inputs: dict        #: NIR input node name -> input Population
    outputs: dict       #: NIR output node name -> Population
    dt: float
    reset: str
    gain: str = "nir"
    weight_exp: int = 4                 #: the exponent the scales were chosen for
    weight_exp_auto: bool = False       #: True when derived from the graph's weight and threshold range
    connections: dict = field(default_factory=dict)
    notes: tuple = ()                   #: assumptions made (dt, reset, gain, approximations)

    def summary(self):
        """A human-readable account: assumptions, per population scale and decays, per connection
        the operators it came from and its synaptic memory (kernel vs dense words)."""
        lines = [f"dt = {self.dt:g} (graph time units per chip step), reset {self.reset!r}, gain {self.gain!r}, "
                 f"weight_exp {self.weight_exp} ({'derived from the graph' if self.weight_exp_auto else 'given'})"]
        lines += [f"  note: {n}" for n in self.notes]
        for name, p in self.populations.items():
            lines.append(f"  {name} ({p['kind']}): scale {p['scale']:.6g} state units per NIR unit, threshold "
                         f"{p['threshold']}, du {p['du']}, dv {p['dv']}")
        for (a, b), c in self.connections.items():
            lines.append(f"  {a} -> {b}: {' > '.join(c['ops'])}, {c['kernel_words']} kernel words "
                         f"(dense {c['dense_words']})")
        return "\n".join(lines)


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


class _Pass:
    """A subgraph's Input or Output node inside the flattened graph: passes its signal on."""

    def __init__(self, shape):
        self.shape = None if shape is None else tuple(int(s) for s in np.asarray(shape).ravel())


class _Unreadable:
    """A node of a file that could not be constructed (the reason is in the problem list)."""

    def __init__(self, kind):
        self.kind = kind


# --- reading files ------------------------------------------------------------------------------

def load_nir(path):
    """A ``nir.NIRGraph`` from a NIR HDF5 file, read tolerantly: no type check (graphs written by
    Norse and others fail nir's), missing optional fields filled with NIR's defaults (``v_reset``
    0, ``w_in`` 1), unknown fields ignored. Nodes that cannot be built at all are listed in one
    :class:`NirError`."""
    nir = _nir()
    import h5py
    from nir.serialization import hdf2dict
    try:
        with h5py.File(path, "r") as f:
            data = hdf2dict(f["node"])
    except (OSError, KeyError) as e:
        raise NirError(f"{str(path)!r} is not a readable NIR HDF5 file ({e})", "path", str(path)) from e
    problems = []
    graph = _graph_from_dict(nir, data, "", problems)
    if problems:
        raise NirError(f"{str(path)!r}: {len(problems)} node(s) could not be read:\n"
                       + "\n".join(f"  - {p}" for p in problems), "nodes", problems)
    return graph


def _graph_from_dict(nir, data, prefix, problems):
    nodes = {}
    for name, node in data.get("nodes", {}).items():
        kind = _text(node.get("type"))
        if kind == "NIRGraph":
            nodes[name] = _graph_from_dict(nir, node, f"{prefix}{name}.", problems)
            continue
        cls = getattr(nir, kind, None) if kind else None
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            nodes[name] = _Unreadable(kind)
            problems.append(f"node {prefix + name!r}: unknown node type {kind!r}")
            continue
        allowed = {f.name for f in dataclasses.fields(cls) if f.init} | {"type", "shape", "metadata"}
        values = {k: v for k, v in node.items() if k in allowed}
        values["type"] = kind
        if "metadata" in values and not isinstance(values["metadata"], dict):
            del values["metadata"]
        if kind in ("IF", "LIF", "CubaLIF") and "v_reset" not in values and "v_threshold" in values:
            values["v_reset"] = np.zeros_like(np.asarray(values["v_threshold"], dtype=np.float64))
        if kind in ("CubaLIF", "CubaLI") and "w_in" not in values:
            values["w_in"] = 1.0
        if kind in ("Conv1d", "Conv2d") and "input_shape" not in values:
            values["input_shape"] = None
        if kind == "Flatten" and "input_type" not in values:
            values["input_type"] = None
        try:
            nodes[name] = cls.from_dict(values)
        except Exception as e:      # any constructor failure is reported with the node's name
            nodes[name] = _Unreadable(kind)
            problems.append(f"node {prefix + name!r} ({kind}): {type(e).__name__}: {e}")
    edges = [(_text(a), _text(b)) for a, b in data.get("edges", [])]
    metadata = data.get("metadata", {})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata if isinstance(metadata, dict) else {},
                        type_check=False)


# --- the graph, flattened and analysed -----------------------------------------------------------

def _flatten(graph, problems, prefix=""):
    """(nodes, edges) with nested NIRGraphs inlined: a subgraph's nodes are named
    ``subgraph.node``; its Input and Output nodes become pass-through nodes."""
    nir = _nir()
    nodes, edges, subgraphs = {}, [], {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _flatten(node, problems, full + ".")
            for sub_name, sub in node.nodes.items():
                if isinstance(sub, (nir.Input, nir.Output)):
                    t = sub.input_type if isinstance(sub, nir.Input) else sub.output_type
                    sub_nodes[f"{full}.{sub_name}"] = _Pass(next(iter(t.values())) if t else None)
            nodes.update(sub_nodes)
            edges += sub_edges
            subgraphs[name] = node
        else:
            nodes[full] = node

    def endpoint(name, role):
        if name in subgraphs:
            cls = nir.Output if role == "source" else nir.Input
            ports = [k for k, n in subgraphs[name].nodes.items() if isinstance(n, cls)]
            if len(ports) != 1:
                problems.append(f"edge endpoint {prefix + name!r}: the subgraph has {len(ports)} "
                                f"{cls.__name__} nodes; name one as '{name}.<node>'")
                return None
            return f"{prefix}{name}.{ports[0]}"
        return prefix + name

    for a, b in graph.edges:
        a, b = endpoint(a, "source"), endpoint(b, "target")
        if a is not None and b is not None:
            edges.append((a, b))
    return nodes, edges


def _params(node, *names):
    return [np.asarray(getattr(node, n), dtype=np.float64) for n in names]


def _neuron_shape(node):
    kind = _kind(node)
    attr = {"Threshold": "threshold", "I": "r", "IF": "r", "LI": "tau", "LIF": "tau",
            "CubaLI": "tau_mem", "CubaLIF": "tau_mem"}[kind]
    shape = np.asarray(getattr(node, attr)).shape
    return tuple(int(s) for s in shape) or (1,)


def _input_shape(node):
    t = node.input_type.get("input") if isinstance(node.input_type, dict) else None
    return tuple(int(s) for s in np.asarray(t).ravel()) if t is not None else None


def _uniform(problems, node_name, field_name, values):
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or np.any(np.isnan(values)):
        problems.append(f"node {node_name!r}: {field_name} is empty or contains NaN")
        return None
    if not np.allclose(values, values[0]):
        problems.append(f"node {node_name!r}: {field_name} differs between neurons ({values.min()} .. "
                        f"{values.max()}); a population has one value: split the node into groups with equal values")
        return None
    return float(values[0])


def _fraction(problems, node_name, field_name, tau, dt):
    """dt / tau for forward Euler (0 for an infinite tau), or None after recording why not."""
    if tau is None:
        return None
    if tau <= 0:
        problems.append(f"node {node_name!r}: {field_name} = {tau} is out of range: allowed > 0")
        return None
    if np.isinf(tau):
        return 0.0
    if dt / tau > 1:
        problems.append(f"node {node_name!r}: {field_name} = {tau} is shorter than dt = {dt}; forward Euler needs "
                        f"{field_name} >= dt: use a smaller dt")
        return None
    return dt / tau


@dataclass
class _Neuron:
    """A neuron node in float NIR units: I_syn = (1 - a) I_syn + gain * (drive + bias_syn);
    v = v + b (v_leak - v) + I_syn (+ bias_v); a spike when v > threshold."""
    name: str
    kind: str
    size: int
    shape: tuple
    a: float                    #: dt / tau_syn (1: no synaptic state)
    b: float                    #: dt / tau_mem (0: no leak)
    gain: np.ndarray            #: per neuron
    v_leak: np.ndarray
    threshold: float | None     #: None: never fires
    v_reset: float
    chains: list                #: (source name, [node names], [lowering ops])
    tau_mem: float | None = None
    tau_syn: float | None = None


def _gain(node, kind, dt, gain, a, b):
    """The per-neuron factor from a synapse output to the chip's u (before scaling)."""
    shape = _neuron_shape(node)
    if kind == "Threshold" or gain == "unit":
        g = np.ones(shape)
    else:
        r = np.broadcast_to(np.asarray(node.r, dtype=np.float64), shape)
        if gain == "r":
            g = r.copy()
        elif kind in ("IF", "I"):
            g = dt * r
        elif kind in ("CubaLIF", "CubaLI"):
            g = a * b * r
        else:
            g = b * r
    if kind in ("CubaLIF", "CubaLI") and gain != "unit":
        g = g * np.broadcast_to(np.asarray(node.w_in, dtype=np.float64), shape)
    return np.asarray(g, dtype=np.float64).ravel()


def _analyse(graph, dt, gain):
    """Flatten and check the whole graph; returns (nodes, neurons {name: _Neuron}, inputs
    {name: shape}, outputs {name: source}, order) or raises one NirError listing every problem."""
    problems = []
    nodes, edges = _flatten(graph, problems)
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                problems.append(f"edge ({a!r}, {b!r}) names a node {n!r} that is not in the graph")
    edges = [(a, b) for a, b in edges if a in nodes and b in nodes]
    supported = _SYNAPSE_NODES + _NEURON_NODES + ("Input", "Output")
    for name, node in nodes.items():
        kind = node.kind if isinstance(node, _Unreadable) else _kind(node)
        if isinstance(node, _Unreadable) or kind in supported:
            continue
        why = _WHY.get(kind, "no chip equivalent")
        if kind == "Delay":
            why = f"delay {np.asarray(node.delay).ravel()[:4].tolist()}: " + why
        problems.append(f"node {name!r}: {kind} is not supported ({why}); supported: Input, Output, "
                        f"{', '.join(k for k in _SYNAPSE_NODES if k != '_Pass')}, {', '.join(_NEURON_NODES)}, "
                        "NIRGraph (inlined)")
    preds = {}
    for a, b in edges:
        preds.setdefault(b, []).append(a)

    def chains_of(name):
        chains = []
        for first in preds.get(name, []):
            chain, cur, seen, ok = [], first, set(), True
            while _kind(nodes[cur]) in _SYNAPSE_NODES:
                if cur in seen:
                    problems.append(f"node {cur!r}: a cycle of synapse nodes without a neuron")
                    ok = False
                    break
                seen.add(cur)
                chain.append(cur)
                ps = preds.get(cur, [])
                if len(ps) != 1:
                    problems.append(f"node {cur!r} ({_kind(nodes[cur])}) has {len(ps)} inputs; a synapse node needs "
                                    "exactly one (sum several sources at the neuron node instead)")
                    ok = False
                    break
                cur = ps[0]
            if ok and _kind(nodes[cur]) in _NEURON_NODES + ("Input",):
                chains.append((cur, chain[::-1]))
            elif ok and _kind(nodes[cur]) in supported:     # unsupported nodes are reported once, above
                problems.append(f"node {name!r} receives from {cur!r} ({_kind(nodes[cur])}), which is not an Input "
                                "or neuron node")
        return chains

    inputs, neurons, raw_chains = {}, {}, {}
    for name, node in nodes.items():
        kind = _kind(node)
        if kind == "Input":
            shape = _input_shape(node)
            inputs[name] = shape if shape else (1,)
        elif kind in _NEURON_NODES + ("Output",):
            raw_chains[name] = chains_of(name)
    # neuron parameters
    for name, node in nodes.items():
        kind = _kind(node)
        if kind not in _NEURON_NODES:
            continue
        shape = _neuron_shape(node)
        tau_mem = tau_syn = None
        if kind in ("CubaLIF", "CubaLI"):
            tau_mem = _uniform(problems, name, "tau_mem", node.tau_mem)
            tau_syn = _uniform(problems, name, "tau_syn", node.tau_syn)
            b, a = _fraction(problems, name, "tau_mem", tau_mem, dt), _fraction(problems, name, "tau_syn", tau_syn, dt)
        elif kind in ("LIF", "LI"):
            tau_mem = _uniform(problems, name, "tau", node.tau)
            a, b = 1.0, _fraction(problems, name, "tau", tau_mem, dt)
        elif kind == "Threshold":
            a, b = 1.0, 1.0
        else:
            a, b = 1.0, 0.0
        if a is None or b is None:
            continue
        if kind in ("CubaLIF", "CubaLI") and a == 0:
            problems.append(f"node {name!r}: tau_syn = inf (a current that never decays) is not supported")
            continue
        g = _gain(node, kind, dt, gain, a, b)
        if not np.all(np.isfinite(g)):
            problems.append(f"node {name!r}: the input gain is not finite (check r and tau)")
            continue
        v_leak = (np.broadcast_to(np.asarray(node.v_leak, dtype=np.float64), shape).ravel()
                  if hasattr(node, "v_leak") else np.zeros(int(np.prod(shape))))
        threshold, v_reset = None, 0.0
        if kind not in _SILENT:
            threshold = _uniform(problems, name, "threshold" if kind == "Threshold" else "v_threshold",
                                 node.threshold if kind == "Threshold" else node.v_threshold)
            if kind != "Threshold":
                v_reset = _uniform(problems, name, "v_reset", node.v_reset if node.v_reset is not None else 0.0)
            if threshold is not None and threshold <= 0:
                problems.append(f"node {name!r}: v_threshold = {threshold} is out of range: allowed > 0")
        neurons[name] = _Neuron(name, kind, int(np.prod(shape)), shape, a, b, g, v_leak, threshold,
                                v_reset or 0.0, [], tau_mem, tau_syn)
    # synapse chains, lowered in an order where sources come first (their shapes are known)
    shapes = dict(inputs)
    order = _topological(list(inputs) + list(neurons), raw_chains)
    for name in order:
        if name not in neurons:
            continue
        neuron = neurons[name]
        for src, chain in raw_chains.get(name, []):
            if src not in shapes:
                if src in nodes and _kind(nodes[src]) in _NEURON_NODES:   # a recurrent edge: flat source
                    shapes[src] = (int(np.prod(_neuron_shape(nodes[src]))),)
                else:
                    continue
            if not any(_kind(nodes[n]) in _WEIGHTED for n in chain):
                problems.append(f"edge {src!r} -> {name!r} has no weight node (Affine, Linear, Scale, Conv or "
                                "pooling); insert a Linear (identity weights) to say how strongly it connects")
                continue
            ops = _lower_chain(nodes, chain, shapes[src], problems)
            if ops is None:
                continue
            out_shape = ops[-1].out_shape if ops else shapes[src]
            if int(np.prod(out_shape)) != neuron.size:
                problems.append(f"node {name!r} has {neuron.size} neurons but the synapses from {src!r} give "
                                f"{int(np.prod(out_shape))} outputs (shape {tuple(out_shape)})")
                continue
            if len(neuron.shape) == 1 and len(out_shape) > 1:
                neuron.shape = tuple(out_shape)
            neuron.chains.append((src, chain, ops))
        shapes[name] = neuron.shape
    outputs = {}
    for name, node in nodes.items():
        if _kind(node) != "Output":
            continue
        for src, chain in raw_chains.get(name, []):
            weighted = [n for n in chain if _kind(nodes[n]) not in ("Flatten", "_Pass")]
            if weighted:
                problems.append(f"output {name!r} is fed through {weighted}; connect outputs directly to a neuron node")
            elif src not in neurons:
                problems.append(f"output {name!r} must be fed by a neuron node, not {src!r}")
            else:
                outputs[name] = src
    if problems:
        raise NirError(f"the NIR graph has {len(problems)} construct(s) the chip cannot take:\n"
                       + "\n".join(f"  - {p}" for p in problems), "graph", problems)
    return nodes, neurons, inputs, outputs, order


def _topological(names, chains):
    """`names` in an order where sources come first (recurrent edges ignored)."""
    deps = {n: {src for src, _ in chains.get(n, []) if src != n and src in names} for n in names}
    order, done, pending = [], set(), list(names)
    while pending:
        ready = [n for n in pending if deps[n] <= done]
        if not ready:       # a cycle between populations: take the rest in file order
            order.extend(pending)
            break
        for n in ready:
            order.append(n)
            done.add(n)
            pending.remove(n)
    return order


def _lower_chain(nodes, chain, shape, problems):
    """The lowering operators of a synapse chain from a source of `shape`, or None (problems noted)."""
    ops, shape = [], tuple(shape)
    for n in chain:
        node, kind = nodes[n], _kind(nodes[n])
        size = int(np.prod(shape))
        try:
            if kind == "_Pass":
                continue
            if kind == "Flatten":
                op = lowering.Flatten(shape)
            elif kind in ("Affine", "Linear"):
                w = np.asarray(node.weight, dtype=np.float64)
                if w.ndim != 2:
                    raise ValueError(f"{kind} weight has shape {w.shape}; only 2-D (out, in) weights are supported")
                if w.shape[1] != size:
                    raise ValueError(f"weight of shape {w.shape} takes {w.shape[1]} inputs but receives {size}")
                bias = np.asarray(node.bias, dtype=np.float64).ravel() if kind == "Affine" else None
                op = lowering.Dense(w, None if bias is None or not np.any(bias) else
                                    np.broadcast_to(bias, (w.shape[0],)).copy())
            elif kind == "Scale":
                s = np.asarray(node.scale, dtype=np.float64).ravel()
                if s.size != size:
                    raise ValueError(f"Scale of size {s.size} after a signal of size {size}")
                op = lowering.Scale(s, shape)
            elif kind in ("Conv1d", "Conv2d"):
                w = np.asarray(node.weight, dtype=np.float64)
                dims = 1 if kind == "Conv1d" else 2
                if w.ndim != dims + 2:
                    raise ValueError(f"weight has shape {w.shape}; {kind} needs {dims + 2} dimensions")
                groups = int(np.asarray(node.groups).ravel()[0])
                in_shape = shape
                if len(shape) != dims + 1:
                    spatial = getattr(node, "input_shape", None)
                    if spatial is None:
                        raise ValueError(f"its input has shape {shape} and the node has no input_shape: cannot tell "
                                         "the spatial shape; give input_shape or shape the source node's parameters")
                    in_shape = (w.shape[1] * groups,) + tuple(int(v) for v in np.atleast_1d(spatial).ravel())
                    if int(np.prod(in_shape)) != size:
                        raise ValueError(f"input_shape gives {in_shape} ({int(np.prod(in_shape))} values) but the "
                                         f"input has {size}")
                bias = np.asarray(node.bias, dtype=np.float64).ravel()
                op = lowering.Conv.make(w, in_shape, node.stride, _text(node.padding) if isinstance(
                    node.padding, (str, bytes)) else node.padding, node.dilation, groups,
                    bias if np.any(bias) else None)
            elif kind in ("SumPool2d", "AvgPool2d"):
                if len(shape) != 3:
                    raise ValueError(f"its input has shape {shape}; 2-d pooling needs (channels, height, width): "
                                     "shape the source node's parameters or put the pooling after a Conv2d")
                op = lowering.Pool.make(shape, node.kernel_size, node.stride, node.padding, kind == "AvgPool2d")
            else:   # pragma: no cover - _SYNAPSE_NODES lists every kind handled above
                raise ValueError(f"{kind} is not a synapse node")
        except ValueError as e:
            problems.append(f"node {n!r} ({kind}): {e}")
            return None
        if isinstance(op, (lowering.Dense, lowering.Conv, lowering.Scale)):
            weights = op.scale if isinstance(op, lowering.Scale) else op.weight
            if not np.all(np.isfinite(weights)):
                problems.append(f"node {n!r}: weights contain NaN or infinity")
                return None
        ops.append(op)
        shape = tuple(op.out_shape)
    return ops


# --- import -------------------------------------------------------------------------------------

def _load(graph):
    nir = _nir()
    if isinstance(graph, (str, bytes)) or hasattr(graph, "__fspath__"):
        graph = load_nir(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise NirError(f"graph must be a nir.NIRGraph or a file path, not {graph!r}", "graph", graph)
    return graph


def _check_options(dt, gain, reset, metadata):
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and dt > 0 and np.isfinite(dt)):
        raise NirError(f"dt = {dt!r} is out of range: allowed > 0", "dt", dt)
    if gain not in ("nir", "r", "unit"):
        raise NirError(f"gain must be 'nir', 'r' or 'unit', not {gain!r}", "gain", gain)
    if reset is None:
        reset = _text(metadata.get("neurofabric.reset", "value")) if isinstance(metadata, dict) else "value"
    if reset not in ("value", "subtract"):
        raise NirError(f"reset must be 'value' or 'subtract', not {reset!r}", "reset", reset)
    return reset


def _strict_threshold(value):
    """The chip's integer threshold for NIR's ``v > value``: ``floor(value) + 1`` (the state is an
    integer), with float noise around integers removed first."""
    nearest = round(value)
    if abs(value - nearest) <= 1e-9 * max(1.0, abs(value)):
        value = nearest
    return math.floor(value) + 1


def _bias_per_step(neuron, chain_bias):
    """NIR-unit bias added to v per step: v_leak's b * v_leak, plus synaptic (Affine/Conv) bias
    times the gain; into a current-based neuron the synaptic bias is applied at its steady state
    (gain / a), so it skips the tau_syn transient at the start."""
    bias = neuron.b * neuron.v_leak
    if chain_bias is not None:
        bias = bias + chain_bias * neuron.gain / neuron.a
    return bias


def _drive_bound(neuron, weights, chain_bias):
    """A bound on |v| in NIR units (times the gain), for choosing the weight exponent."""
    positive = max([np.clip(w, 0, None).sum(axis=0).max(initial=0.0) for w in weights] + [0.0])
    bias = np.abs(_bias_per_step(neuron, chain_bias)).max(initial=0.0)
    u = positive / neuron.a
    if neuron.threshold is not None:
        return neuron.threshold + abs(neuron.v_reset) + u + bias
    steps = 1.0 / neuron.b if neuron.b > 0 else _INTEGRATOR_HORIZON
    return abs(neuron.v_reset) + (u + bias) * steps


def from_nir(graph, dt=1.0, reset=None, gain="nir", weight_exp=None, scale=None):
    """A :class:`Network` from a NIR graph (or a path to a NIR HDF5 file, read with :func:`load_nir`).

    `dt`: the time step in the graph's time unit; `reset`: ``"value"`` (the NIR semantics) or
    ``"subtract"`` (default: the graph's ``neurofabric.reset`` metadata, else ``"value"``);
    `gain`: ``"nir"``, ``"r"`` or ``"unit"`` (module docstring); `weight_exp`: the weight
    exponent to aim for (None: derived from the graph, the largest for which every population's
    threshold and input range fit the 24-bit state); `scale`: state units per NIR potential unit,
    or None to choose one per population (largest weight = ``127 << weight_exp``; a graph written
    by :func:`to_nir` is in state units and imports with scale 1).
    Every construct the chip cannot take is listed in one :class:`NirError`.
    Returns ``(network, report)``.
    """
    graph = _load(graph)
    metadata = getattr(graph, "metadata", None) or {}
    reset = _check_options(dt, gain, reset, metadata)
    if scale is None and isinstance(metadata, dict) and _text(metadata.get("neurofabric.units")) == "state":
        scale = 1.0
    if scale is not None and (isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale > 0
                                                                and np.isfinite(scale))):
        raise NirError(f"scale = {scale!r} is out of range: allowed > 0", "scale", scale)
    auto = weight_exp is None
    if not auto and (isinstance(weight_exp, bool) or not isinstance(weight_exp, (int, np.integer))
                     or not 0 <= weight_exp <= WEIGHT_EXP_MAX):
        raise NirError(f"weight_exp = {weight_exp!r} is out of range: allowed None or [0, {WEIGHT_EXP_MAX}]",
                       "weight_exp", weight_exp)
    nodes, neurons, inputs, outputs, order = _analyse(graph, float(dt), gain)

    # per population: effective weights (NIR units times gain) and bias
    lowered = {}
    for name, neuron in neurons.items():
        incoming, chain_bias = [], None
        for src, _, ops in neuron.chains:
            src_size = int(np.prod(inputs[src])) if src in inputs else neurons[src].size
            w, b = lowering.lower(ops, src_size)
            if b is not None:
                chain_bias = b if chain_bias is None else chain_bias + b
            incoming.append((src, w * neuron.gain[None, :], ops))
        lowered[name] = (incoming, chain_bias)
    peaks = {n: max([float(np.abs(w).max(initial=0.0)) for _, w, _ in inc] + [0.0])
             for n, (inc, _) in lowered.items()}
    if auto:
        exps = []
        for name, (incoming, chain_bias) in lowered.items():
            bound = _drive_bound(neurons[name], [w for _, w, _ in incoming], chain_bias)
            if peaks[name] > 0 and bound > 0:
                exps.append(math.floor(math.log2(STATE_MAX * peaks[name] / (WEIGHT_MAX * bound))))
        weight_exp = int(min(max(min(exps, default=4), 0), WEIGHT_EXP_MAX))
    weight_exp = int(weight_exp)

    net = Network()
    pops, report, input_pops, connections = {}, {}, {}, {}
    for name in order:
        if name in inputs:
            pops[name] = input_pops[name] = net.input(int(np.prod(inputs[name])), name=name)
            continue
        neuron = neurons[name]
        incoming, chain_bias = lowered[name]
        if scale is not None:
            pop_scale = float(scale)
        else:
            pop_scale = (WEIGHT_MAX << weight_exp) / peaks[name] if peaks[name] > 0 else float(1 << weight_exp)
        if neuron.threshold is not None and neuron.threshold * pop_scale >= STATE_MAX:
            if scale is not None:
                raise NirError(f"node {name!r}: v_threshold * scale = {neuron.threshold * pop_scale} exceeds the "
                               f"24-bit state ({STATE_MAX}); use a smaller scale", "scale", scale)
            pop_scale = (STATE_MAX - 1) / neuron.threshold
        threshold = STATE_MAX if neuron.threshold is None else min(STATE_MAX, _strict_threshold(
            neuron.threshold * pop_scale))
        bias = np.round(_bias_per_step(neuron, chain_bias) * pop_scale).astype(np.int64)
        du, dv = int(round(DECAY_ONE * neuron.a)), int(round(DECAY_ONE * neuron.b))
        pops[name] = net.population(neuron.size, LIF(threshold=threshold, dv=dv, du=du, reset=reset,
                                                     v_reset=int(round(neuron.v_reset * pop_scale))),
                                    bias=bias, name=name)
        report[name] = {
            "kind": neuron.kind, "scale": pop_scale, "du": du, "dv": dv, "threshold": threshold,
            "tau_mem_requested": neuron.tau_mem,
            "tau_mem_effective": None if neuron.tau_mem is None else (np.inf if dv == 0 else dt * DECAY_ONE / dv),
            "tau_syn_requested": neuron.tau_syn,
            "tau_syn_effective": None if neuron.tau_syn is None else (np.inf if du == 0 else dt * DECAY_ONE / du),
            "bias_note": ("Affine/Conv bias into a current-based neuron applied to v at its steady state "
                          f"(gain / (dt/tau_syn)); the first ~{neuron.tau_syn / dt:.3g} steps differ"
                          if chain_bias is not None and neuron.a < 1 else None),
            "_incoming": [(src, w * pop_scale, _structure(ops, neuron.gain * pop_scale)) for src, w, ops in incoming],
        }
    for name in order:
        for src, w, structure in report.get(name, {}).pop("_incoming", []):
            net.connect(pops[src], pops[name], weights=w, structure=structure)
            dense = pops[src].size * pops[name].size
            connections[(src, name)] = {
                "ops": [type(op).__name__ for op in structure] if structure else ["Dense"],
                "kernel_words": lowering.kernel_words(structure) if structure else int(np.count_nonzero(w)),
                "dense_words": dense}
    notes = [f"one chip step is dt = {dt:g} graph time units (forward Euler); every hop between neuron nodes "
             "takes one step",
             f"reset {reset!r}" + (" (NIR's own semantics)" if reset == "value" else
                                   " (subtract the threshold, as the exporting framework does)"),
             f"input gain convention {gain!r}",
             "the chip fires at v >= threshold; thresholds are floor(v_threshold * scale) + 1 so that this is "
             "NIR's v > v_threshold on the integer state"]
    notes += [f"{n}: {p['bias_note']}" for n, p in report.items() if p["bias_note"]]
    return net, ImportReport(report, input_pops, {o: pops[s] for o, s in outputs.items()}, float(dt), reset,
                             gain, weight_exp, auto, connections, tuple(notes))


def _structure(ops, factor):
    """The chain's operators in state units without biases (None when it is a plain dense chain):
    the factor goes into the last weight node if it is uniform, else into a trailing Scale."""
    if not any(isinstance(op, (lowering.Conv, lowering.Pool, lowering.Flatten)) for op in ops):
        return None
    ops = [dataclasses.replace(op, bias=None) if isinstance(op, (lowering.Conv, lowering.Dense)) else op for op in ops]
    if np.allclose(factor, factor[0]):
        for k in range(len(ops) - 1, -1, -1):
            if isinstance(ops[k], (lowering.Conv, lowering.Dense)):
                ops[k] = ops[k].scaled(float(factor[0]))
                return tuple(ops)
            if isinstance(ops[k], lowering.Scale):
                ops[k] = lowering.Scale(ops[k].scale * float(factor[0]), ops[k].in_shape)
                return tuple(ops)
    return tuple(ops) + (lowering.Scale(np.asarray(factor, dtype=np.float64), ops[-1].out_shape),)


def simulate_nir(graph, inputs, steps, dt=1.0, reset=None, gain="nir"):
    """Float reference of a NIR graph with the chip's timing: forward Euler with step `dt`, the
    same `gain` and `reset` conventions as :func:`from_nir`, spikes at ``v > threshold``; input
    events act in the step they arrive, spikes reach the next neuron node one step later.

    `inputs`: {Input node name: (steps', size) array of events (counts)}. Returns {neuron node
    name: {"spikes": (steps, size) int array, "v": final membrane, "i": final synaptic current}}."""
    graph = _load(graph)
    reset = _check_options(dt, gain, reset, getattr(graph, "metadata", None) or {})
    _, neurons, input_shapes, _, _ = _analyse(graph, float(dt), gain)
    for name in inputs:
        if name not in input_shapes:
            raise NirError(f"inputs names {name!r}, which is not an Input node of the graph "
                           f"({sorted(input_shapes)})", "inputs", name)
    events = {}
    for name, shape in input_shapes.items():
        size = int(np.prod(shape))
        x = np.zeros((steps, size))
        if name in inputs:
            given = np.asarray(inputs[name], dtype=np.float64).reshape(-1, size)[:steps]
            x[:len(given)] = given
        events[name] = x
    state = {n: dict(v=np.zeros(p.size), i=np.zeros(p.size), spikes=np.zeros((steps, p.size), dtype=np.int64))
             for n, p in neurons.items()}
    for t in range(steps):
        previous = {n: (s["spikes"][t - 1] if t else np.zeros(neurons[n].size)) for n, s in state.items()}
        for name, p in neurons.items():
            drive = np.zeros(p.size)
            for src, _, ops in p.chains:
                x = events[src][t] if src in events else previous[src]
                drive += lowering.apply_chain(ops, x[None, :])[0]
            s = state[name]
            s["i"] = (1 - p.a) * s["i"] + p.gain * drive
            s["v"] = s["v"] + p.b * (p.v_leak - s["v"]) + s["i"]
            if p.threshold is not None:
                fired = s["v"] > p.threshold
                s["spikes"][t] = fired
                s["v"] = np.where(fired, s["v"] - p.threshold if reset == "subtract" else p.v_reset, s["v"])
    return state


# --- export -------------------------------------------------------------------------------------

def to_nir(network, dt=1.0, outputs=None, chip=None, compiled=None):
    """Export `network` as a ``nir.NIRGraph`` with the given `dt`.

    Weights are exported as the chip computes them: quantised to int8 << weight_exp, taken from
    `compiled` (a :class:`CompiledNetwork`), read back from `chip` (learned weights) or, if
    neither is given, the network's float weights. A connection with a `structure` (e.g. imported
    from a Conv2d) is written as its operators (Conv1d/Conv2d, SumPool2d/AvgPool2d, Flatten,
    Linear, Scale) when they reproduce those weights exactly, else as a dense Linear.
    Potentials are in chip state units, thresholds ``threshold - 0.5`` (NIR fires at
    ``v > v_threshold``, the chip at ``v >= threshold`` on integers).
    Neuron kinds follow the parameters: ``du = dv = 4096`` -> Threshold (a bias on an Affine); a
    threshold of 2^23 - 1 (never fires) -> I, LI or CubaLI; else IF, LIF or CubaLIF.
    `outputs`: populations to expose as Output nodes (default: those without outgoing
    connections). The metadata says the potentials are in state units, so :func:`from_nir` reads
    the graph back with scale 1 and gives the same chip configuration. Adaptive thresholds and
    refractory periods have no NIR equivalent and are rejected. The reset mode is recorded in the
    metadata (``neurofabric.reset``)."""
    nir = _nir()
    if not isinstance(network, Network):
        raise NirError(f"network must be a Network, not {network!r}", "network", network)
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and dt > 0):
        raise NirError(f"dt = {dt!r} is out of range: allowed > 0", "dt", dt)
    pops = [p for p in network.populations if not p.is_input]
    resets = {p.neuron.reset for p in pops}
    if len(resets) > 1:
        raise NirError("populations use both reset modes; NIR metadata holds one: export them separately",
                       "reset", resets)
    shapes = _population_shapes(network)
    nodes, edges = {}, []
    for p in network.populations:
        if p.is_input:
            nodes[p.name] = nir.Input(np.array(shapes[p]))
    for p in pops:
        node, syn_gain, bias_as_affine = _neuron_node(nir, p, dt, shapes[p])
        nodes[p.name] = node
        incoming = [c for c in network.connections if c.post is p]
        bias = p.bias.astype(np.float64)
        if bias_as_affine and np.any(bias != 0) and not incoming:
            raise NirError(f"population {p.name!r} has a bias but no input connection to carry it as an "
                           "Affine bias", "bias", None)
        for k, c in enumerate(incoming):
            w = _export_weights(c, chip, compiled)
            carry = bias if (k == 0 and bias_as_affine and np.any(bias != 0)) else None
            chain = _export_chain(nir, c, w, syn_gain, carry, chip, compiled)
            if len(shapes[c.pre]) > 1 and isinstance(chain[0], (nir.Linear, nir.Affine)):
                chain.insert(0, nir.Flatten(input_type={"input": np.array(shapes[c.pre])}, start_dim=0, end_dim=-1))
            names = [f"{c.pre.name}->{p.name}"] + [f"{c.pre.name}->{p.name}#{i}" for i in range(1, len(chain))]
            for n, node_ in zip(names, chain):
                nodes[n] = node_
            path = [c.pre.name] + names + [p.name]
            edges += list(zip(path[:-1], path[1:]))
    if outputs is None:
        outputs = [p for p in pops if not any(c.pre is p for c in network.connections)]
    for p in outputs:
        name = f"output:{p.name}"
        nodes[name] = nir.Output(np.array(shapes[p]))
        edges.append((p.name, name))
    metadata = {"neurofabric.reset": resets.pop() if resets else "value", "neurofabric.dt": float(dt),
                "neurofabric.units": "state"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)


def _population_shapes(network):
    """A shape per population: the input shape of its outgoing structures, else the output
    shape of its incoming ones, else flat."""
    shapes = {}
    for c in network.connections:
        if c.structure:
            first, last = c.structure[0], c.structure[-1]
            if hasattr(first, "in_shape") and int(np.prod(first.in_shape)) == c.pre.size:
                shapes.setdefault(c.pre, tuple(first.in_shape))
            if int(np.prod(last.out_shape)) == c.post.size:
                shapes.setdefault(c.post, tuple(last.out_shape))
    return {p: shapes.get(p, (p.size,)) for p in network.populations}


def _neuron_node(nir, p, dt, shape):
    """(node, synaptic gain to divide out of the weights, whether the bias rides on an Affine)."""
    n = p.neuron
    if n.theta_plus or n.refractory:
        raise NirError(f"population {p.name!r}: adaptive thresholds (theta_plus) and refractory periods have "
                       "no NIR equivalent; set them to 0 to export", "neuron", n)
    du, dv, _ = n.decays()
    ones = np.ones(shape)
    bias = p.bias.astype(np.float64).reshape(shape)
    threshold = (n.threshold - 0.5) * ones
    v_reset = n.v_reset * ones
    silent = n.threshold == STATE_MAX
    if du == DECAY_ONE and dv == DECAY_ONE and not silent:
        return nir.Threshold(threshold=threshold), 1.0, True
    if du == DECAY_ONE:
        if dv == 0:
            node = nir.I(r=ones / dt) if silent else nir.IF(r=ones / dt, v_threshold=threshold, v_reset=v_reset)
            return node, 1.0, True
        tau = dt * DECAY_ONE / dv
        if silent:
            return nir.LI(tau=tau * ones, r=tau / dt * ones, v_leak=bias * tau / dt), 1.0, False
        return nir.LIF(tau=tau * ones, r=tau / dt * ones, v_leak=bias * tau / dt, v_threshold=threshold,
                       v_reset=v_reset), 1.0, False
    if dv == 0:
        raise NirError(f"population {p.name!r}: dv = 0 with du < 4096 (a current-based IF) has no NIR "
                       "node: CubaLIF needs a finite tau_mem; give the population a leak", "dv", 0)
    if du == 0:
        raise NirError(f"population {p.name!r}: du = 0 (a current that never decays) has no CubaLIF "
                       "equivalent", "du", 0)
    tau_syn, tau_mem = dt * DECAY_ONE / du, dt * DECAY_ONE / dv
    common = dict(tau_syn=tau_syn * ones, tau_mem=tau_mem * ones, r=tau_mem / dt * ones,
                  v_leak=bias * tau_mem / dt, w_in=ones)
    node = nir.CubaLI(**common) if silent else nir.CubaLIF(**common, v_threshold=threshold, v_reset=v_reset)
    return node, tau_syn / dt, False


def _quantised_structure(connection, weights, chip, compiled):
    """The connection's operators with the weights the chip holds, or None when they cannot
    reproduce `weights` exactly (e.g. learned weights, or slices with different exponents)."""
    ops = list(connection.structure)
    owner = compiled if compiled is not None else getattr(chip, "compiled", None)
    exps = {owner.weight_exp[s.core] for s in owner.slices_of(connection.post)} if owner is not None else set()
    if len(exps) > 1:
        return None
    if exps:
        step = float(1 << exps.pop())
        # average pooling's 1/area multiplies the last weight node's values in the matrix
        f = float(np.prod([1.0 / (op.kernel[0] * op.kernel[1]) for op in ops
                           if isinstance(op, lowering.Pool) and op.average]))
        k = max(i for i, op in enumerate(ops) if isinstance(op, (lowering.Conv, lowering.Dense, lowering.Scale)))
        op = ops[k]
        if isinstance(op, lowering.Scale):
            ops[k] = lowering.Scale(np.clip(np.round(op.scale * f / step), -128, 127) * step / f, op.in_shape)
        else:
            ops[k] = dataclasses.replace(op, weight=np.clip(np.round(op.weight * f / step), -128, 127) * step / f)
    matrix, _ = lowering.lower(ops, connection.pre.size)
    scale = float(np.abs(weights).max(initial=1.0))
    return ops if np.allclose(matrix, weights, rtol=0, atol=1e-9 * scale) else None


def _export_chain(nir, connection, weights, syn_gain, bias, chip, compiled):
    """NIR nodes for one connection (in order), the bias (if any) on the last weight node."""
    ops = _quantised_structure(connection, weights, chip, compiled) if connection.structure else None
    if ops is not None:
        nodes = _structure_nodes(nir, ops, syn_gain, bias)
        if nodes is not None:
            return nodes
    w = weights.T * syn_gain
    return [nir.Affine(weight=w.copy(), bias=bias.ravel().copy()) if bias is not None else nir.Linear(weight=w.copy())]


def _structure_nodes(nir, ops, syn_gain, bias):
    nodes = []
    last = max(i for i, op in enumerate(ops) if isinstance(op, (lowering.Conv, lowering.Dense, lowering.Scale)))
    for k, op in enumerate(ops):
        factor = syn_gain if k == last else 1.0
        carry = bias if k == last else None
        if isinstance(op, lowering.Conv):
            if any(p0 != p1 for p0, p1 in op.padding):
                return None
            out_channels = op.weight.shape[0]
            conv_bias = np.zeros(out_channels)
            if carry is not None:
                per_channel = carry.reshape(out_channels, -1)
                if not np.all(per_channel == per_channel[:, :1]):
                    return None
                conv_bias = per_channel[:, 0].astype(np.float64)
            pads = tuple(p0 for p0, _ in op.padding)
            cls = nir.Conv1d if op.weight.ndim == 3 else nir.Conv2d
            one = (lambda t: t[0]) if op.weight.ndim == 3 else tuple
            nodes.append(cls(input_shape=one(op.in_shape[1:]), weight=op.weight * factor, stride=one(op.stride),
                             padding=one(pads), dilation=one(op.dilation), groups=op.groups, bias=conv_bias))
        elif isinstance(op, lowering.Pool):
            if any(p0 != p1 for p0, p1 in op.padding):
                return None
            cls = nir.AvgPool2d if op.average else nir.SumPool2d
            nodes.append(cls(kernel_size=np.array(op.kernel), stride=np.array(op.stride),
                             padding=np.array([p0 for p0, _ in op.padding])))
        elif isinstance(op, lowering.Flatten):
            nodes.append(nir.Flatten(input_type={"input": np.array(op.in_shape)}, start_dim=0, end_dim=-1))
        elif isinstance(op, lowering.Dense):
            w = op.weight * factor
            nodes.append(nir.Affine(weight=w, bias=carry.ravel().astype(np.float64)) if carry is not None
                         else nir.Linear(weight=w))
        else:
            if carry is not None:
                return None
            nodes.append(nir.Scale(scale=(op.scale * factor).reshape(op.in_shape)))
    return nodes


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
    """:func:`from_nir` on a NIR HDF5 file (read tolerantly by :func:`load_nir`)."""
    return from_nir(load_nir(path), **kwargs)


def write_nir(path, network, **kwargs):
    """Write :func:`to_nir` of `network` to a NIR HDF5 file."""
    _nir().write(path, to_nir(network, **kwargs))
