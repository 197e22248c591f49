"""Network description: configuration dataclasses and validation (host/network.py)."""

import math

import numpy as np
import pytest

from neurofabric.host.network import (
    IF,
    LIF,
    STDP,
    CapacityError,
    Network,
    RangeError,
    ShapeError,
    ValidationError,
    decay_from_tau,
    tau_from_decay,
)


def test_lif_units_tau_and_raw():
    lif = LIF(threshold=500, tau_mem=20, tau_syn=4)
    du, dv, dtheta = lif.decays()
    assert (du, dv, dtheta) == (round(4096 / 4), round(4096 / 20), 0)
    p = lif.profile()
    assert (p.du, p.dv, p.threshold) == (1024, 205, 500)
    tau_syn, tau_mem, tau_theta = lif.effective_taus()
    assert tau_syn == 4.0 and abs(tau_mem - 4096 / 205) < 1e-12 and math.isinf(tau_theta)
    raw = LIF(threshold=500, dv=205, du=1024)
    assert raw.profile() == p
    # defaults: one-step current, no leak
    assert LIF().decays() == (4096, 0, 0)
    assert IF(100).profile().reset_mode.name == "SUBTRACT"
    assert decay_from_tau(math.inf) == 0 and tau_from_decay(0) == math.inf
    assert decay_from_tau(1) == 4096


def test_configs_are_frozen():
    lif = LIF()
    with pytest.raises(AttributeError):
        lif.threshold = 3
    with pytest.raises(AttributeError):
        STDP().a_plus = 3


@pytest.mark.parametrize("kwargs, exc, field", [
    ({"threshold": -1}, RangeError, "threshold"),
    ({"threshold": 1 << 23}, RangeError, "threshold"),
    ({"threshold": 1.5}, RangeError, "threshold"),
    ({"v_reset": -(1 << 23) - 1}, RangeError, "v_reset"),
    ({"reset": "zero"}, ValidationError, "reset"),
    ({"refractory": 256}, RangeError, "refractory"),
    ({"theta_plus": -1}, RangeError, "theta_plus"),
    ({"tau_mem": 0.5}, RangeError, "tau_mem"),
    ({"tau_mem": float("nan")}, RangeError, "tau_mem"),
    ({"tau_syn": -3}, RangeError, "tau_syn"),
    ({"dv": 4097}, RangeError, "dv"),
    ({"du": -1}, RangeError, "du"),
    ({"dtheta": 5000}, RangeError, "dtheta"),
    ({"tau_mem": 10, "dv": 3}, ValidationError, "dv"),
])
def test_lif_validation(kwargs, exc, field):
    with pytest.raises(exc) as info:
        LIF(**kwargs)
    assert field in str(info.value)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"a_plus": 256}, "a_plus"), ({"a_minus": -1}, "a_minus"), ({"shift": 16}, "shift"),
    ({"w_min": -129}, "w_min"), ({"w_min": 10, "w_max": 5}, "w_max"), ({"seed": 1 << 16}, "seed"),
    ({"tau_pre": 0.2}, "tau_pre"), ({"pre_decay": 4097}, "pre_decay"),
])
def test_stdp_validation(kwargs, field):
    with pytest.raises(RangeError) as info:
        STDP(**kwargs)
    assert field in str(info.value)


def test_stdp_config():
    c = STDP(a_plus=10, tau_pre=8, post_decay=100, w_min=0).config()
    assert (c.a_plus, c.pre_decay, c.post_decay, c.w_min) == (10, 512, 100, 0)


def test_network_building():
    net = Network()
    inp = net.input(4, name="in")
    pop = net.population(3, LIF(threshold=10), bias=[1, 2, 3])
    conn = net.connect(inp, pop, weights=np.ones((4, 3)))
    assert inp.is_input and not pop.is_input
    assert list(pop.bias) == [1, 2, 3]
    assert conn.weights.shape == (4, 3) and conn.plastic is None
    scalar = net.connect(pop, net.population(2), weights=5)
    assert np.all(scalar.weights == 5)


def _bad_calls(net, inp, pop):
    other = Network().population(3)
    return [
        (lambda: net.input(0), RangeError, "size"),
        (lambda: net.input(4, name="in"), ValidationError, "name"),
        (lambda: net.population(3, neuron="lif"), ValidationError, "neuron"),
        (lambda: net.population(3, bias=[1, 2]), ShapeError, "bias"),
        (lambda: net.population(3, bias=[1, 2, 1 << 23]), RangeError, "bias"),
        (lambda: net.population(3, bias=[1, 2, 0.5]), RangeError, "bias"),
        (lambda: net.population(2, bias=[np.nan, 0]), RangeError, "bias"),
        (lambda: net.connect(inp, pop, weights=np.ones((3, 4))), ShapeError, "weights"),
        (lambda: net.connect(inp, pop, weights=np.full((4, 3), np.nan)), RangeError, "weights"),
        (lambda: net.connect(inp, pop, weights=np.full((4, 3), 1e9)), RangeError, "weights"),
        (lambda: net.connect(inp, pop, weights=np.array([["a"] * 3] * 4)), ShapeError, "weights"),
        (lambda: net.connect(pop, inp, weights=1), ValidationError, "post"),
        (lambda: net.connect(inp, other, weights=1), ValidationError, "post"),
        (lambda: net.connect(inp, pop, weights=1, plastic="stdp"), ValidationError, "plastic"),
    ]


def test_validation_table_changes_nothing():
    net = Network()
    inp = net.input(4, name="in")
    pop = net.population(3)
    for call, exc, field in _bad_calls(net, inp, pop):
        before = (list(net.populations), list(net.connections))
        with pytest.raises(exc) as info:
            call()
        assert info.value.field == field, (info.value, field)
        assert (net.populations, net.connections) == before


def test_duplicate_connection_rejected():
    net = Network()
    inp = net.input(2)
    pop = net.population(2)
    net.connect(inp, pop, weights=1)
    with pytest.raises(ValidationError, match="already connected"):
        net.connect(inp, pop, weights=2)
    assert len(net.connections) == 1


def test_exception_hierarchy():
    assert issubclass(CapacityError, ValidationError) and issubclass(ValidationError, ValueError)
