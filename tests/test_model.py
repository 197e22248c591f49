"""The bit-exact chip model: hand-computed cases, extremes, a float reference, validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurofabric.hdl.memory_map import MEMORY_MAP, MemoryMapError
from neurofabric.hdl.protocol import (
    LFSR_BITS,
    ChipRegister,
    Counter,
    MemorySpace,
    ProfileField,
    ResetMode,
    StateField,
    StdpField,
)
from neurofabric.host.model import (
    ChipModel,
    ChipShape,
    ModelError,
    NeuronProfile,
    Route,
    StdpConfig,
    decay,
    lfsr_draws,
    lfsr_next,
    lfsr_seed,
)

STATE_MAX = (1 << 23) - 1
STATE_MIN = -(1 << 23)


def one_neuron(profile, weight=0, weight_exp=0, bias=0, axons=1):
    m = ChipModel(ChipShape(cores=1, neurons=1, axons=axons, lanes=1))
    m.set_weights(0, np.full((axons, 1), weight), weight_exp)
    m.set_profiles(0, [profile])
    m.set_neurons(0, bias=[bias])
    m.set_routes({(0, 0): [Route(host=True)]})
    return m


def test_decay_rounds_toward_zero():
    assert decay(1000, 2048) == 500
    assert decay(-1000, 2048) == -500
    assert decay(1001, 2048) == 500          # 500.5 -> 500
    assert decay(-1001, 2048) == -500        # -500.5 -> -500, not -501
    assert decay(-1, 1) == 0                 # negative values decay to zero too
    assert decay(12345, 0) == 12345
    assert decay(-12345, 4096) == 0
    assert decay(STATE_MAX, 1) == (STATE_MAX * 4095) >> 12
    assert decay(STATE_MIN, 1) == -((-STATE_MIN * 4095) >> 12)


def test_hand_computed_cuba_trajectory():
    # w=10 << 2 = 40 per event; du = 1024 (u *= 3/4), dv = 2048 (v *= 1/2), bias 3, threshold 100
    m = one_neuron(NeuronProfile(du=1024, dv=2048, threshold=100), weight=10, weight_exp=2, bias=3)
    for t in range(3):
        m.inject(t, [(0, 0)])
    u = v = 0
    expected_spikes = []
    for t in range(6):
        u = (u * 3 >> 2) + (40 if t < 3 else 0)
        v = (v >> 1) + u + 3
        if v >= 100:
            expected_spikes.append(t)
            v = 0
        out = m.step()
        assert [s for s, _, _ in out] == ([t] if t in expected_spikes else [])
        st_ = m.state(0)
        assert (st_["u"][0], st_["v"][0]) == (u, v), f"step {t}"
    assert expected_spikes == [2]


def test_saturation_both_ways():
    axons = 64
    for weight, bound in ((127, STATE_MAX), (-128, STATE_MIN)):
        m = one_neuron(NeuronProfile(threshold=STATE_MAX), weight=weight, weight_exp=15, axons=axons)
        m.inject(0, [(0, a) for a in range(axons)])
        fired = m.step()
        assert m.state(0)["u"][0] == bound
        # a saturated v reaches even the largest threshold: it fires and resets
        assert m.state(0)["v"][0] == (0 if bound > 0 else bound)
        assert bool(fired) == (bound > 0)
    # the accumulator saturates at 24 bits before the exponent is applied
    m = one_neuron(NeuronProfile(threshold=STATE_MAX), weight=127, axons=1)
    m.inject(0, [(0, 0)] * 70_000)
    m.step()
    assert m.state(0)["u"][0] == STATE_MAX


def test_threshold_edges():
    for bias, spikes in ((99, False), (100, True)):
        m = one_neuron(NeuronProfile(threshold=100, dv=4096), bias=bias)
        assert bool(m.step()) is spikes
    # threshold 0 with v = 0 fires (v >= threshold)
    m = one_neuron(NeuronProfile(threshold=0))
    assert m.step() == [(0, 0, 0)]


def test_subtract_reset_and_refractory():
    m = one_neuron(NeuronProfile(threshold=100, reset_mode=ResetMode.SUBTRACT), bias=130)
    m.step()
    assert m.state(0)["v"][0] == 30
    m = one_neuron(NeuronProfile(threshold=100, refractory=2, v_reset=-5, dv=4096), bias=100)
    fired = [bool(m.step()) for _ in range(7)]
    assert fired == [True, False, False, True, False, False, True]
    m = one_neuron(NeuronProfile(threshold=100, refractory=2, v_reset=-5), bias=100)
    m.step()
    m.step()
    assert m.state(0)["v"][0] == -5 and m.state(0)["refractory"][0] == 1


def test_adaptive_threshold():
    m = one_neuron(NeuronProfile(threshold=100, theta_plus=50, dtheta=2048, dv=4096), bias=120)
    assert m.step()                           # v = 120 >= 100 -> theta = 50
    assert m.state(0)["theta"][0] == 50
    assert not m.step()                       # theta -> 25, 120 < 125
    assert m.state(0)["theta"][0] == 25
    assert m.step()                           # theta -> 12, 120 >= 112 -> theta = 62
    assert m.state(0)["theta"][0] == 62


def test_float_reference_within_quantisation():
    rng = np.random.default_rng(7)
    du, dv = 300, 150
    m = one_neuron(NeuronProfile(du=du, dv=dv, threshold=STATE_MAX), weight=37, weight_exp=3, bias=11)
    u = v = 0.0
    au, av = 1 - du / 4096, 1 - dv / 4096
    bound_u = 1 / (1 - au)
    bound_v = (1 + bound_u) / (1 - av)
    for t in range(400):
        n = int(rng.integers(0, 3))
        m.inject(t, [(0, 0)] * n)
        m.step()
        u = u * au + n * 37 * 8
        v = v * av + u + 11
        s = m.state(0)
        assert abs(s["u"][0] - u) <= bound_u
        assert abs(s["v"][0] - v) <= bound_v


def test_routing_multicast_delay_and_host_output():
    m = ChipModel(ChipShape(cores=2, neurons=4, axons=4, lanes=2))
    for core in range(2):
        m.set_weights(core, np.eye(4, dtype=int) * 100)
        m.set_profiles(core, [NeuronProfile(threshold=100, du=4096, dv=4096)])
    m.set_routes({(0, 1): [Route(core=1, axon=2), Route(core=1, axon=3), Route(host=True)],
                  (1, 2): [Route(host=True)], (1, 3): [Route(host=True)]})
    m.inject(0, [(0, 1)])
    out = m.run(4)
    assert out == [(0, 0, 1), (1, 1, 2), (1, 1, 3)]
    assert m.counters[Counter.ROUTED_EVENTS] == 2
    assert m.counters[Counter.INPUT_EVENTS] == 1
    assert m.counters[Counter.SPIKES] == 3


def test_lfsr_is_maximal_length():
    state, seen = 1, 0
    while True:
        state = lfsr_next(state)
        seen += 1
        if state == 1:
            break
    assert seen == (1 << LFSR_BITS) - 1
    assert all(lfsr_seed(s, lane) != 0 for s in (0, 0xFFFF) for lane in range(64))


def stdp_pair(offset, shift=0, reward=1):
    """One plastic synapse: a pre event at step 5 and a post spike forced at step 5 + offset."""
    m = ChipModel(ChipShape(cores=1, neurons=1, axons=2, lanes=1))
    m.set_weights(0, np.array([[0], [100]]))             # axon 1 forces the post spike
    m.set_profiles(0, [NeuronProfile(threshold=100, dv=4096, du=4096)])
    config = StdpConfig(pre_increment=40, post_increment=40, pre_decay=1024, post_decay=1024,
                        a_plus=2, a_minus=3, shift=shift)
    m.set_stdp(0, config, plastic=[1, 0])
    m.set_reward(reward)
    m.inject(5, [(0, 0)])
    m.inject(5 + offset, [(0, 1)])
    m.run(12)
    return m.weights(0)[0, 0]


def test_stdp_pair_hand_computed():
    # pre at 5, post at 7: pre-trace at step 7 = decay(decay(40)) = 22 -> LTP 2 * 22
    assert stdp_pair(2) == 2 * (((40 * 3) >> 2) * 3 >> 2) == 44
    # same step: causal, LTP with the fresh trace 40
    assert stdp_pair(0) == 2 * 40
    # post at 5, pre at 7: post-trace 22 at step 7 -> LTD 3 * 22
    assert stdp_pair(-2) == -3 * 22
    # reward scales and signs the update
    assert stdp_pair(2, reward=-2) == -2 * 2 * 22


def test_stdp_stochastic_rounding_is_unbiased():
    # a * trace = 2 * 56 = 112; shift 8: mean dw 0.4375 per pairing, never more than 1
    results = []
    for seed in range(1, 200):
        m = ChipModel(ChipShape(cores=1, neurons=1, axons=2, lanes=1))
        m.set_weights(0, np.array([[0], [100]]))
        m.set_profiles(0, [NeuronProfile(threshold=100, dv=4096, du=4096)])
        m.set_stdp(0, StdpConfig(pre_increment=100, pre_decay=1024, a_plus=2, a_minus=0, shift=8,
                                 seed=seed * 97), plastic=[1, 0])
        m.inject(5, [(0, 0)])
        m.inject(7, [(0, 1)])
        m.run(9)
        results.append(m.weights(0)[0, 0])
    assert set(results) <= {0, 1}
    assert abs(np.mean(results) - 112 / 256) < 0.12


def test_stdp_weight_bounds():
    m = ChipModel(ChipShape(cores=1, neurons=1, axons=2, lanes=1))
    m.set_weights(0, np.array([[10], [100]]))
    m.set_profiles(0, [NeuronProfile(threshold=100, dv=4096, du=4096)])
    m.set_stdp(0, StdpConfig(a_plus=255, pre_increment=255, shift=0, w_min=-20, w_max=20), plastic=[1, 0])
    m.inject(0, [(0, 0), (0, 1)])
    m.run(2)
    assert m.weights(0)[0, 0] == 20


@pytest.mark.parametrize("call, field", [
    (lambda: NeuronProfile(du=4097), "du"),
    (lambda: NeuronProfile(dv=-1), "dv"),
    (lambda: NeuronProfile(threshold=1 << 23), "threshold"),
    (lambda: NeuronProfile(v_reset=-(1 << 23) - 1), "v_reset"),
    (lambda: NeuronProfile(refractory=256), "refractory"),
    (lambda: NeuronProfile(threshold=1.5), "threshold"),
    (lambda: StdpConfig(shift=16), "shift"),
    (lambda: StdpConfig(w_min=10, w_max=5), "w_max"),
    (lambda: ChipShape(neurons=10, lanes=4), "lanes"),
    (lambda: ChipShape(cores=0), "cores"),
])
def test_invalid_parameters_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_invalid_configuration_changes_nothing():
    m = ChipModel(ChipShape(cores=1, neurons=4, axons=2, lanes=2))
    m.set_weights(0, np.ones((2, 4), dtype=int))
    with pytest.raises(ModelError, match=r"weights contains 128.*\[-128, 127\]"):
        m.set_weights(0, np.full((2, 4), 128))
    with pytest.raises(ModelError, match="shape"):
        m.set_weights(0, np.ones((4, 2), dtype=int))
    with pytest.raises(ModelError, match="NaN"):
        m.set_weights(0, np.full((2, 4), np.nan))
    with pytest.raises(ModelError, match="weight_exp"):
        m.set_weights(0, np.zeros((2, 4), dtype=int), weight_exp=16)
    assert (m.weights(0) == 1).all()
    with pytest.raises(ModelError, match="event axon"):
        m.inject(0, [(0, 2)])
    with pytest.raises(ModelError, match="route destination axon"):
        m.set_routes({(0, 0): [Route(core=0, axon=9)]})


def test_memory_map_round_trip_and_rejected_writes():
    m = ChipModel(ChipShape(cores=2, neurons=4, axons=2, lanes=2, route_entries=8))
    m.write_words(MemorySpace.WEIGHT, 1, 2, [-128, 127])
    assert list(m.read_words(MemorySpace.WEIGHT, 1, 2, 2)) == [-128, 127]
    m.write_words(MemorySpace.PROFILE, 0, MEMORY_MAP[MemorySpace.PROFILE].address(m.shape, ProfileField.THRESHOLD, 1),
                  [777])
    assert m.cores[0].profiles[1].threshold == 777
    m.write_words(MemorySpace.STATE, 0, MEMORY_MAP[MemorySpace.STATE].address(m.shape, StateField.V, 3), [-99])
    assert m.state(0)["v"][3] == -99
    m.write_words(MemorySpace.STDP, 0, StdpField.A_PLUS.value, [9])
    assert m.cores[0].stdp.a_plus == 9
    m.write_words(MemorySpace.CHIP, 0, ChipRegister.REWARD.value, [-3])
    assert m.reward == -3
    before = m.read_words(MemorySpace.PROFILE, 0, 0, 64).copy()
    with pytest.raises(ModelError, match="dv = 5000"):
        m.write_words(MemorySpace.PROFILE, 0, 0, [100, 5000])     # first word valid, second not
    assert (m.read_words(MemorySpace.PROFILE, 0, 0, 64) == before).all()
    with pytest.raises(ModelError, match="addr"):
        m.read_words(MemorySpace.WEIGHT, 0, 7, 2)
    with pytest.raises(ModelError, match="read-only"):
        m.write_words(MemorySpace.COUNTER, 0, 0, [1])


def test_out_of_range_words_are_rejected_never_truncated():
    """One policy: a word outside its field's range raises MemoryMapError (also a ModelError)
    naming field, value and range, and changes nothing; a signed word may be given as its
    32-bit two's complement."""
    m = ChipModel(ChipShape(cores=1, neurons=4, axons=2, lanes=2, route_entries=8))
    m.write_words(MemorySpace.WEIGHT, 0, 0, [0xFFFFFFFD, -3])
    assert list(m.read_words(MemorySpace.WEIGHT, 0, 0, 2)) == [-3, -3]
    threshold = MEMORY_MAP[MemorySpace.PROFILE].address(m.shape, ProfileField.THRESHOLD)
    for space, addr, word, field, value, allowed in [
        (MemorySpace.WEIGHT, 1, 200, "weight", 200, (-128, 127)),
        (MemorySpace.PROFILE, threshold, 1 << 23, "threshold", 1 << 23, (0, (1 << 23) - 1)),
        (MemorySpace.ROUTE_ENTRY, 0, 1 << 30 | 5, "route destination axon", 5, (0, 0)),   # HOST: axon 0
    ]:
        before = m.read_words(space, 0, 0, 8).tolist()
        with pytest.raises(MemoryMapError) as caught:
            m.write_words(space, 0, addr, [word])
        assert isinstance(caught.value, ModelError)
        assert (caught.value.field, caught.value.value, caught.value.allowed) == (field, value, allowed)
        assert m.read_words(space, 0, 0, 8).tolist() == before


def test_stdp_bounds_are_checked_on_the_values_after_the_write():
    """w_min <= w_max holds after each write: both in one write may cross the stored pair (a
    load never depends on what the previous network left); one alone is checked against the
    stored other."""
    m = ChipModel(ChipShape(cores=1, neurons=4, axons=2, lanes=2))
    w_min = StdpField.W_MIN.value
    m.write_words(MemorySpace.STDP, 0, w_min, [-20, -10])
    m.write_words(MemorySpace.STDP, 0, w_min, [30, 40])           # both above the stored w_max
    assert (m.cores[0].stdp.w_min, m.cores[0].stdp.w_max) == (30, 40)
    with pytest.raises(MemoryMapError) as caught:
        m.write_words(MemorySpace.STDP, 0, StdpField.W_MAX.value, [29])
    assert (caught.value.field, caught.value.value, caught.value.allowed) == ("w_max", 29, (30, 127))
    assert (m.cores[0].stdp.w_min, m.cores[0].stdp.w_max) == (30, 40)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_state_stays_in_range_under_random_configurations(seed):
    rng = np.random.default_rng(seed)
    shape = ChipShape(cores=2, neurons=8, axons=8, lanes=4)
    m = ChipModel(shape)
    for core in range(2):
        m.set_weights(core, rng.integers(-128, 128, (8, 8)), int(rng.integers(0, 16)))
        m.set_profiles(core, [NeuronProfile(
            du=int(rng.integers(0, 4097)), dv=int(rng.integers(0, 4097)),
            threshold=int(rng.integers(0, 1 << 23)), v_reset=int(rng.integers(-(1 << 23), 1 << 23)),
            reset_mode=ResetMode(int(rng.integers(0, 2))), refractory=int(rng.integers(0, 4)),
            theta_plus=int(rng.integers(0, 1 << 20)), dtheta=int(rng.integers(0, 4097)))
            for _ in range(3)])
        m.set_neurons(core, bias=rng.integers(-(1 << 23), 1 << 23, 8), profile=rng.integers(0, 3, 8))
        m.set_stdp(core, StdpConfig(seed=int(rng.integers(0, 1 << 16))))
    m.set_routes({(c, n): [Route(core=1 - c, axon=n), Route(host=True)] for c in range(2) for n in range(8)})
    for t in range(20):
        m.inject(t, [(int(rng.integers(0, 2)), int(rng.integers(0, 8))) for _ in range(5)])
    m.run(20)
    for core in range(2):
        s = m.state(core)
        for name in ("u", "v", "theta"):
            assert STATE_MIN <= s[name].min() and s[name].max() <= STATE_MAX
        assert (s["theta"] >= 0).all() and (s["refractory"] <= 3).all()
        assert (s["pre_trace"] <= 255).all() and (s["post_trace"] <= 255).all()
        w = m.weights(core)
        assert w.min() >= -128 and w.max() <= 127


def test_lfsr_draws_match_stepping():
    state, expected = 0xACE1, []
    for _ in range(70_000):
        state = lfsr_next(state)
        expected.append(state)
    draws, last = lfsr_draws(0xACE1, 70_000)
    assert list(draws) == expected and last == expected[-1]


def test_stdp_lane_order_matches_a_scalar_reference():
    """The vectorised learning phase against a synapse-by-synapse loop of the documented order."""
    rng = np.random.default_rng(3)
    shape = ChipShape(cores=1, neurons=8, axons=6, lanes=4)
    m = ChipModel(shape)
    m.set_weights(0, rng.integers(-60, 60, (6, 8)))
    m.set_profiles(0, [NeuronProfile(threshold=150, du=2048, dv=1024)])
    config = StdpConfig(a_plus=37, a_minus=29, shift=7, seed=4321)
    plastic = np.array([1, 1, 0, 1, 1, 1])
    m.set_stdp(0, config, plastic=plastic)
    for t in range(30):
        m.inject(t, [(0, int(a)) for a in np.flatnonzero(rng.random(6) < 0.4)])
    w = m.weights(0)
    pre, post = np.zeros(6, dtype=np.int64), np.zeros(8, dtype=np.int64)
    lfsr = [lfsr_seed(4321, lane) for lane in range(4)]
    reference = ChipModel(shape)       # runs the neurons only, learning applied by the loop below
    reference.set_weights(0, w)
    reference.set_profiles(0, [NeuronProfile(threshold=150, du=2048, dv=1024)])
    reference.set_routes({(0, n): [Route(host=True)] for n in range(8)})
    reference._inputs = {k: list(v) for k, v in m._inputs.items()}
    for t in range(30):
        events = {a for _, a in reference._inputs.get(t, [])}
        reference.cores[0].weights = w.copy()
        fired = np.zeros(8, dtype=bool)
        fired[[neuron for _, _, neuron in reference.step()]] = True
        pre, post = decay(pre, config.pre_decay), decay(post, config.post_decay)
        for a in sorted(events):
            if plastic[a]:
                for n in range(8):
                    lfsr[n % 4] = lfsr_next(lfsr[n % 4])
                    mag = (config.a_minus * int(post[n]) + (lfsr[n % 4] & 127)) >> 7
                    w[a, n] = min(max(w[a, n] - mag, config.w_min), config.w_max)
        for a in events:
            pre[a] = min(pre[a] + config.pre_increment, 255)
        for n in np.flatnonzero(fired):
            for a in np.flatnonzero(plastic):
                lfsr[n % 4] = lfsr_next(lfsr[n % 4])
                mag = (config.a_plus * int(pre[a]) + (lfsr[n % 4] & 127)) >> 7
                w[a, n] = min(max(w[a, n] + mag, config.w_min), config.w_max)
        post[fired] = np.minimum(post[fired] + config.post_increment, 255)
    m.run(30)
    assert (m.weights(0) == w).all()
    assert (m.state(0)["pre_trace"] == pre).all() and (m.state(0)["post_trace"] == post).all()
