"""The model's winner-take-all, rest command and weight normalisation (docs/semantics.md,
"Winner-take-all", "Rest"), and its vectorised integration against a per-event reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurofabric.host.model import (
    ChipModel,
    ChipShape,
    ModelError,
    NeuronProfile,
    Route,
    StdpConfig,
    WtaConfig,
    lfsr_at,
    lfsr_seed,
)

ACC_MAX = (1 << 23) - 1
ONE_WINNER = WtaConfig()


def wta_chip(drive, members=None, config=ONE_WINNER, threshold=100, lanes=1):
    """One core whose neurons get `drive` (weight units, one event on axon 0) in step 0, all
    routed to the host."""
    n = len(drive)
    m = ChipModel(ChipShape(cores=1, neurons=n, axons=2, lanes=lanes))
    weights = np.zeros((2, n), dtype=np.int64)
    weights[0] = drive
    m.set_weights(0, weights)
    m.set_profiles(0, [NeuronProfile(du=4096, dv=0, threshold=threshold, v_reset=-7)])
    m.set_routes({(0, i): [Route(host=True)] for i in range(n)})
    m.set_wta(0, config, members)
    m.inject(0, [(0, 0)])
    return m


def test_k_winners_by_margin_ties_to_the_lower_index():
    # margins 20, 5, 27, 27, -1 (threshold 100): with k = 2 the two 27s win, neuron 2 before 3
    m = wta_chip([120, 105, 127, 127, 99], config=WtaConfig(k=2, hold=3))
    assert m.run(1) == [(0, 0, 2), (0, 0, 3)]
    s = m.state(0)
    # losers (0, 1, 4: whether they reached threshold or not) reset to v_reset and held 3 steps;
    # winners reset by their own profile and not held
    assert s["v"].tolist() == [-7, -7, -7, -7, -7]
    assert s["refractory"].tolist() == [3, 3, 0, 0, 3]


def test_equal_margins_go_to_the_lowest_indices():
    m = wta_chip([110] * 6, config=WtaConfig(k=3))
    assert [n for _, _, n in m.run(1)] == [0, 1, 2]


def test_subtractive_inhibition_and_non_members():
    members = np.array([1, 1, 1, 0], dtype=bool)
    m = wta_chip([127, 90, 60, 120], members=members, config=WtaConfig(k=1, reset=False, inhibit=50, hold=0))
    # neuron 3 is outside the group: it fires alongside the winner and is not inhibited
    assert m.run(1) == [(0, 0, 0), (0, 0, 3)]
    assert m.state(0)["v"].tolist() == [-7, 90 - 50, 60 - 50, -7]


def test_no_member_at_threshold_changes_nothing():
    drive = [50, 99, 20]
    plain = wta_chip(drive, config=None)
    with_wta = wta_chip(drive, config=WtaConfig(k=1, hold=9))
    assert plain.run(3) == with_wta.run(3) == []
    for key, value in plain.state(0).items():
        assert np.array_equal(value, with_wta.state(0)[key]), key


def test_losers_are_held_for_hold_steps_then_integrate_again():
    m = wta_chip([127, 126], config=WtaConfig(k=1, hold=2))
    for t in range(1, 5):
        m.inject(t, [(0, 0)])
    got = [n for _, _, n in m.run(5)]
    # neuron 1 loses at step 0 and is held in steps 1 and 2 while neuron 0 wins again; in step 3
    # it integrates from v_reset, and loses again (neuron 0 still wins by margin)
    assert got == [0, 0, 0, 0, 0]
    assert m.state(0)["refractory"].tolist() == [0, 2]


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, r"k = 0 is out of range: allowed \[1, 15\]"),
    ("k", 16, r"k = 16 is out of range: allowed \[1, 15\]"),
    ("hold", 256, r"hold = 256 is out of range: allowed \[0, 255\]"),
    ("inhibit", -1, r"inhibit = -1 is out of range"),
    ("reset", 1, "reset must be True or False"),
])
def test_wta_config_is_validated(field, value, message):
    with pytest.raises(ModelError, match=message):
        WtaConfig(**{field: value})


def test_set_wta_and_set_rest_validate_before_changing_anything():
    m = ChipModel(ChipShape(cores=1, neurons=4, axons=2, lanes=2))
    with pytest.raises(ModelError, match="members has shape"):
        m.set_wta(0, WtaConfig(), members=[1, 0])
    with pytest.raises(ModelError, match="config must be a WtaConfig"):
        m.set_wta(0, {"k": 1})
    assert m.cores[0].wta is None
    with pytest.raises(ModelError, match=r"normalise = 1048576 is out of range"):
        m.set_rest(0, normalise=1 << 20)
    with pytest.raises(ModelError, match=r"theta_decay = 4097 is out of range"):
        m.set_rest(0, theta_decay=4097)
    assert m.cores[0].norm_total == 0 and m.cores[0].rest_theta_decay == 0


def plastic_core(seed, neurons=8, axons=10, lanes=4):
    rng = np.random.default_rng(seed)
    m = ChipModel(ChipShape(cores=1, neurons=neurons, axons=axons, lanes=lanes))
    m.set_weights(0, rng.integers(0, 80, (axons, neurons)))
    plastic = rng.random(axons) < 0.7
    plastic[0] = True
    m.set_stdp(0, StdpConfig(w_min=0, w_max=100, seed=int(rng.integers(0, 1 << 16))), plastic=plastic)
    return m, rng, plastic


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_normalisation_is_the_documented_integer_rule(seed):
    m, rng, plastic = plastic_core(seed)
    total = int(rng.integers(50, 600))
    members = rng.random(8) < 0.8
    m.set_rest(0, normalise=total, members=members)
    w = m.weights(0)
    w[:, 2] = 0                                  # a column with nothing to scale
    m.set_weights(0, w)
    lfsr = list(m.cores[0].lfsr)
    m.rest()
    got = m.weights(0)
    # the rule, one synapse at a time: members ascending, plastic axons ascending, each synapse
    # one draw of its lane's LFSR (lfsr_at gives draw number k + 1 after a lane's state)
    expected, drawn = w.copy(), [0] * 4
    for n in np.flatnonzero(members):
        lane = n % 4
        s = int(w[plastic, n].sum())
        f = min((total << 12) // s, 65535) if s > 0 and abs(s - total) > total >> 7 else None
        for a in np.flatnonzero(plastic):
            r = int(lfsr_at([lfsr[lane]], np.array([0]), np.array([drawn[lane]]))[0])
            drawn[lane] += 1
            if f is not None:
                expected[a, n] = min(max((int(w[a, n]) * f + (r & 4095)) >> 12, 0), 100)
    assert np.array_equal(got, expected), f"seed {seed}"
    assert np.array_equal(got[~plastic], w[~plastic])


def test_normalisation_reaches_the_target_on_average_and_keeps_a_sum_already_there():
    m, rng, plastic = plastic_core(7, neurons=64, axons=128, lanes=8)
    m.set_rest(0, normalise=2000)
    m.rest()
    sums = m.weights(0)[plastic].sum(axis=0)
    # stochastic rounding: each sum is the target plus a zero-mean error of a few LSBs
    assert abs(sums.mean() - 2000) < 2 and np.abs(sums - 2000).max() < 20
    w = m.weights(0)
    w[plastic, 0] = 0
    w[np.flatnonzero(plastic)[:20], 0] = 100     # exactly 2000: f = 4096, weights kept exactly
    w[plastic, 1] = 0
    w[np.flatnonzero(plastic)[:20], 1] = 100
    w[np.flatnonzero(plastic)[20], 1] = 15       # 2015: within 2000 >> 7 = 15 of the target, kept
    w[plastic, 2] = 0
    w[np.flatnonzero(plastic)[:20], 2] = 100
    w[np.flatnonzero(plastic)[20], 2] = 16       # 2016: beyond the band, scaled
    m.set_weights(0, w)
    m.rest()
    assert np.array_equal(m.weights(0)[:, :2], w[:, :2])
    assert not np.array_equal(m.weights(0)[:, 2], w[:, 2])


def test_rest_clears_state_keeps_theta_weights_and_step_and_decays_theta_if_asked():
    m = wta_chip([127, 127, 127], config=None)
    m.set_profiles(0, [NeuronProfile(du=2048, dv=100, threshold=100, theta_plus=4096)])
    m.set_stdp(0, StdpConfig(seed=3))
    m.set_routes({(0, i): [Route(core=0, axon=1)] for i in range(3)})
    m.run(1)
    assert len(m._pending) == 3
    before = m.state(0)
    assert before["theta"].min() > 0 and before["post_trace"].max() > 0
    weights, step, lfsr = m.weights(0), m.step_count, list(m.cores[0].lfsr)
    m.inject(5, [(0, 0)])
    m.rest()
    after = m.state(0)
    for key in ("u", "v", "refractory", "pre_trace", "post_trace"):
        assert not after[key].any(), key
    assert np.array_equal(after["theta"], before["theta"])
    assert np.array_equal(m.weights(0), weights) and m.step_count == step and m.cores[0].lfsr == lfsr
    assert len(m._pending) == 0 and 5 in m._inputs           # host input queued for later stays
    m.set_rest(0, theta_decay=1024, members=np.array([1, 0, 1], dtype=bool))
    m.rest()
    assert m.state(0)["theta"].tolist() == [before["theta"][0] * 3 // 4, before["theta"][1],
                                            before["theta"][2] * 3 // 4]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_integration_equals_a_per_event_saturating_reference(seed):
    """The vectorised integration (rows gathered once, repeated axons counted) against the
    documented per-event rule ``acc = sat(acc + W[a])``, with duplicate events and weights at
    the extremes."""
    rng = np.random.default_rng(seed)
    neurons, axons = int(rng.integers(1, 40)), int(rng.integers(1, 60))
    m = ChipModel(ChipShape(cores=2, neurons=neurons, axons=axons, lanes=1))
    w = rng.choice([-128, 127, 0, 1, -1, 55], size=(axons, neurons))
    m.set_weights(1, w)
    m.set_profiles(1, [NeuronProfile(du=4096, dv=4096, threshold=(1 << 23) - 1)])
    events = [(1, int(a)) for a in rng.integers(0, axons, int(rng.integers(0, 200)))]
    m.inject(0, events)
    m.run(1)
    acc = np.zeros(neurons, dtype=np.int64)
    for _, a in events:
        acc = np.clip(acc + w[a], -(1 << 23), ACC_MAX)
    assert np.array_equal(m.state(1)["u"], acc), f"seed {seed}"
    assert not m.state(0)["u"].any()


def test_inject_is_validated_before_queueing():
    m = ChipModel(ChipShape(cores=1, neurons=2, axons=3, lanes=1))
    with pytest.raises(ModelError, match=r"event axon contains 3, out of range: allowed \[0, 2\]"):
        m.inject(0, [(0, 1), (0, 3)])
    with pytest.raises(ModelError, match=r"event core contains 1"):
        m.inject(0, np.array([[1, 0]]))
    assert m._inputs == {}


def test_lfsr_seed_is_never_zero_for_the_rest_draws():
    assert all(lfsr_seed(s, lane) for s in (0, 0xFFFF) for lane in range(8))
