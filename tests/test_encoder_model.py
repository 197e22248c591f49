"""The input encoder in the bit-exact model (host/model.py): hand-worked cases, extremes, the
phase edge, Bernoulli statistics and the exact Bernoulli sequence against an independent
scalar reference, the memory map, the step order and reset_state."""

import random

import numpy as np
import pytest

from neurofabric.hdl.protocol import (
    ENCODER_LFSR_TAPS,
    ENCODER_RATE_ONE,
    ChipRegister,
    ChipShape,
    Counter,
    EncoderField,
    EncoderMode,
    MemorySpace,
    ParameterError,
)
from neurofabric.host.model import ChipModel, ModelError, NeuronProfile, Route, StdpConfig, encoder_spikes


def identity_chip(channels, axons=8, mode=EncoderMode.PHASE):
    """One core whose neuron n fires in a step iff axon n got an event (threshold 1, no memory),
    every neuron routed to the host: the host spikes are the encoder's events."""
    shape = ChipShape(cores=1, neurons=axons, axons=axons, lanes=axons, route_entries=axons,
                      encoder_channels=channels)
    model = ChipModel(shape)
    model.set_weights(0, np.eye(axons, dtype=np.int64))
    model.set_profiles(0, [NeuronProfile(du=4096, dv=4096, threshold=1)])
    model.set_routes({(0, n): [Route(host=True)] for n in range(axons)})
    return model


def raster(model, steps, width):
    out = np.zeros((steps, width), dtype=np.int64)
    start = model.step_count
    for t, _, n in model.run(steps):
        out[t - start, n] += 1
    return out


def scalar_phase(rate, phase, steps):
    """An independent statement of PHASE mode: a spike whenever the running sum crosses a
    multiple of 65536."""
    return [((phase + rate * (t + 1)) >> 16) - ((phase + rate * t) >> 16) for t in range(steps)]


def scalar_lfsr(state, count):
    """The encoder's 32-bit Galois LFSR, written out bit by bit (not the model's GF(2) matrices):
    the next `count` states."""
    out = []
    for _ in range(count):
        feedback = state & 1
        state >>= 1
        if feedback:
            state ^= ENCODER_LFSR_TAPS
        out.append(state)
    return out


def _gf2_matmul(a, b, n):
    """a @ b over GF(2) for n x n matrices held as lists of row bitmasks."""
    return [_gf2_apply(b, row, n) for row in a]


def _gf2_apply(matrix, row, n):
    """row (a bitmask over the columns) times matrix (rows as bitmasks), over GF(2)."""
    out = 0
    for k in range(n):
        if row >> k & 1:
            out ^= matrix[k]
    return out


def test_encoder_lfsr_is_maximal_length():
    """The one-step matrix T of the encoder's LFSR has multiplicative order 2**32 - 1 (T^(2**32-1)
    is the identity and T^((2**32-1)/q) is not, for every prime q dividing 2**32 - 1), so every
    non-zero state recurs only after 2**32 - 1 steps."""
    n, order = 32, (1 << 32) - 1
    one = [0] * n                                   # row i: the old bits that new bit i XORs
    for i in range(n - 1):
        one[i] |= 1 << (i + 1)
    for i in range(n):
        if ENCODER_LFSR_TAPS >> i & 1:
            one[i] ^= 1

    def power(e):
        result, base = [1 << i for i in range(n)], one
        while e:
            if e & 1:
                result = _gf2_matmul(result, base, n)
            base = _gf2_matmul(base, base, n)
            e >>= 1
        return result

    identity = [1 << i for i in range(n)]
    assert power(order) == identity
    for q in (3, 5, 17, 257, 65537):
        assert power(order // q) != identity, q


def test_shape_validates_encoder_channels():
    assert ChipShape().encoder_channels == 0
    assert ChipShape(encoder_channels=4096).encoder_channels == 4096
    for bad in (-1, 4097, 2.0, True):
        with pytest.raises(ParameterError, match="encoder_channels"):
            ChipShape(encoder_channels=bad)


def test_phase_mode_hand_cases():
    """Worked by hand: rate 65536 fires every step; rate 0 never; rate 32768 from phase 32768
    fires at steps 0, 2, 4; rate 1 from 65535 fires at step 0 only; rate 21846 (just over a third)
    from 0 fires at steps 2, 5; rate 65535 from 0 fires at 1..5 but not 0."""
    model = identity_chip(6)
    model.set_encoder([65536, 0, 32768, 1, 21846, 65535], [0, 65535, 32768, 65535, 0, 0],
                      [(0, a) for a in range(6)], mode=EncoderMode.PHASE, enabled=True)
    got = raster(model, 6, 8)
    assert got[:, 0].tolist() == [1, 1, 1, 1, 1, 1]
    assert got[:, 1].tolist() == [0] * 6
    assert got[:, 2].tolist() == [1, 0, 1, 0, 1, 0]
    assert got[:, 3].tolist() == [1, 0, 0, 0, 0, 0]
    assert got[:, 4].tolist() == [0, 0, 1, 0, 0, 1]
    assert got[:, 5].tolist() == [0, 1, 1, 1, 1, 1]
    assert not got[:, 6:].any()
    # phases after 6 steps, by hand: 0, 65535, 32768, 0 (65535 + 6 - 65536 = 5), 21846*6 - 2*65536, 65535*6 mod 65536
    assert model.encoder_phase.tolist() == [0, 65535, 32768, 5, 21846 * 6 - 2 * 65536, (65535 * 6) % 65536]


def test_phase_mode_random_against_scalar_reference():
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = np.random.default_rng(seed)
    e, steps = 40, 50
    rates = rng.integers(0, ENCODER_RATE_ONE + 1, e)
    rates[:4] = [0, 1, 65535, 65536]
    phases = rng.integers(0, ENCODER_RATE_ONE, e)
    phases[4:8] = [0, 65535, 0, 65535]
    fired_total = np.zeros(e, dtype=np.int64)
    phase, lfsr = phases.copy(), 1
    per_step = []
    for _ in range(steps):
        fired, phase, lfsr = encoder_spikes(EncoderMode.PHASE, rates, phase, lfsr)
        per_step.append(fired.astype(np.int64))
        fired_total += fired
    got = np.array(per_step)
    for c in range(e):
        assert got[:, c].tolist() == scalar_phase(int(rates[c]), int(phases[c]), steps), f"channel {c}"
    # long-run rate: floor((phase + rate * T) / 65536) spikes in T steps
    assert fired_total.tolist() == ((phases + rates * steps) >> 16).tolist()
    assert lfsr == 1                    # PHASE mode leaves the LFSR alone


def test_bernoulli_exact_sequence_against_scalar_reference():
    """The LFSR steps 16 times per channel per step, in channel order, whatever the rate (rate 0
    and rate 65536 channels too); a channel spikes when the top 16 bits of the state after its
    16 steps are < its rate."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    rng = random.Random(seed)
    e, steps = 7, 30
    model = identity_chip(e)
    rates = [0, ENCODER_RATE_ONE, 65535, 1] + [rng.randrange(ENCODER_RATE_ONE + 1) for _ in range(e - 4)]
    lfsr_seed = rng.randrange(1, 1 << 16)
    model.set_encoder(rates, [rng.randrange(1 << 16) for _ in range(e)], [(0, c) for c in range(e)],
                      mode=EncoderMode.BERNOULLI, enabled=True, seed=lfsr_seed)
    phases_before = model.encoder_phase.copy()
    got = raster(model, steps, 8)[:, :e]
    states = scalar_lfsr(lfsr_seed, 16 * e * steps)
    want = np.array([[int(states[16 * (t * e + c) + 15] >> 16 < rates[c]) for c in range(e)] for t in range(steps)])
    assert got.tolist() == want.tolist()
    assert model.encoder_lfsr == states[-1]
    assert model.encoder_phase.tolist() == phases_before.tolist()    # BERNOULLI leaves phases alone
    assert not got[:, 0].any() and got[:, 1].all()


def test_bernoulli_seed_zero_is_one():
    model = identity_chip(1)
    model.set_encoder(seed=0)
    assert model.encoder_lfsr == 1 and model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER_SEED.value, 1)[0] == 0


def test_bernoulli_statistics():
    """Spike frequency ~ rate / 65536 per channel (binomial, 5 sigma), channels nearly
    uncorrelated, and the sequence reproducible from the seed."""
    seed = random.randrange(1 << 30)
    print(f"seed = {seed}")
    e, steps = 8, 4000
    rates = np.array([0, 6554, 16384, 32768, 49152, 58982, 65535, 65536])
    p = rates / 65536
    fired, phase, lfsr = [], np.zeros(e, dtype=np.int64), seed % 65535 + 1
    start = lfsr
    for _ in range(steps):
        f, phase, lfsr = encoder_spikes(EncoderMode.BERNOULLI, rates, phase, lfsr)
        fired.append(f)
    fired = np.array(fired, dtype=np.float64)
    freq = fired.mean(axis=0)
    sigma = np.sqrt(p * (1 - p) / steps)
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (freq, p)
    middle = fired[:, 2:6]
    corr = np.corrcoef(middle.T)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < 0.1), corr
    again = []
    phase, lfsr = np.zeros(e, dtype=np.int64), start
    for _ in range(steps):
        f, phase, lfsr = encoder_spikes(EncoderMode.BERNOULLI, rates, phase, lfsr)
        again.append(f)
    assert np.array_equal(np.array(again, dtype=np.float64), fired)


def test_encoder_events_add_to_host_inputs_and_routed_spikes():
    """Encoder events are AXON events of this step, summed with host inputs and routed spikes
    to the same axon; the STDP pre-trace of an axon counts a step with events once."""
    shape = ChipShape(cores=1, neurons=4, axons=4, lanes=4, route_entries=4, encoder_channels=3)
    model = ChipModel(shape)
    w = np.zeros((4, 4), dtype=np.int64)
    w[0, 1], w[2, 0] = 10, 1
    model.set_weights(0, w)
    model.set_profiles(0, [NeuronProfile(du=4096, dv=0, threshold=1 << 20)])      # never fires
    model.set_stdp(0, StdpConfig(pre_increment=5, pre_decay=0, a_plus=0, a_minus=0))
    # two channels on axon 0 (every step), one on axon 3 (never)
    model.set_encoder([65536, 65536, 0], [0, 0, 0], [(0, 0), (0, 0), (0, 3)], mode=EncoderMode.PHASE, enabled=True)
    model.inject(0, [(0, 0)])
    model.step()
    assert model.cores[0].u[1] == 30                  # two encoder events + one host event, x 10
    assert model.state(0)["pre_trace"].tolist() == [5, 0, 0, 0]
    assert model.counters[Counter.INPUT_EVENTS] == 1   # host inputs only
    model.step()
    assert model.cores[0].u[1] == 20
    assert model.state(0)["pre_trace"].tolist() == [10, 0, 0, 0]


def test_memory_map_layout_and_validation():
    shape = ChipShape(cores=2, neurons=8, axons=16, lanes=8, encoder_channels=5)
    model = ChipModel(shape)
    e = 5
    model.write_words(MemorySpace.ENCODER, 1, EncoderField.RATE.value * e, [0, 1, 65535, 65536, 7])
    model.write_words(MemorySpace.ENCODER, 0, EncoderField.PHASE.value * e + 3, [65535, 1])
    model.write_words(MemorySpace.ENCODER, 0, EncoderField.TARGET.value * e, [15 | 1 << 16, 3])
    assert model.encoder_rate.tolist() == [0, 1, 65535, 65536, 7]
    assert model.encoder_phase.tolist() == [0, 0, 0, 65535, 1]
    assert list(zip(model.encoder_core.tolist(), model.encoder_axon.tolist()))[:2] == [(1, 15), (0, 3)]
    assert model.read_words(MemorySpace.ENCODER, 0, 0, 15).tolist() == [0, 1, 65535, 65536, 7, 0, 0, 0, 65535, 1,
                                                                        15 | 1 << 16, 3, 0, 0, 0]
    model.write_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, [3])
    assert model.encoder_enabled and model.encoder_mode is EncoderMode.BERNOULLI
    before = model.read_words(MemorySpace.ENCODER, 0, 0, 15).tolist()
    for addr, words, message in [
        (0, [65537], r"encoder rate = 65537 is out of range: allowed \[0, 65536\]"),
        (0, [-1], "encoder rate = -1"),
        (e, [3, 65536], r"encoder phase = 65536 is out of range: allowed \[0, 65535\]"),
        (2 * e, [16], r"encoder target axon = 16 is out of range: allowed \[0, 15\]"),
        (2 * e, [2 << 16], r"encoder target core = 2 is out of range: allowed \[0, 1\]"),
        (2 * e, [1 << 24], "encoder target bits 31..24"),
        (3 * e - 1, [0, 0], r"addr = 14 is out of range: allowed \[0, 13\]"),
    ]:
        with pytest.raises(ModelError, match=message):
            model.write_words(MemorySpace.ENCODER, 0, addr, words)
    assert model.read_words(MemorySpace.ENCODER, 0, 0, 15).tolist() == before      # nothing changed
    with pytest.raises(ModelError, match=r"encoder register = 4 is out of range: allowed \[0, 3\]"):
        model.write_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, [4])
    with pytest.raises(ModelError, match=r"encoder seed = 65536"):
        model.write_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER_SEED.value, [65536])
    assert model.encoder_enabled and model.encoder_mode is EncoderMode.BERNOULLI
    with pytest.raises(ModelError, match=r"targets has shape"):
        model.set_encoder(targets=[(0, 0)])
    with pytest.raises(ModelError, match="mode must be an EncoderMode"):
        model.set_encoder(mode="phase")


def test_no_encoder_chip():
    model = ChipModel(ChipShape(cores=1, neurons=8, axons=8, lanes=8))
    assert model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 3).tolist() == [0, 0, 0]
    for register in (ChipRegister.ENCODER, ChipRegister.ENCODER_SEED, ChipRegister.ENCODER_STEPS):
        with pytest.raises(ModelError, match="no input encoder"):
            model.write_words(MemorySpace.CHIP, 0, register.value, [0])
    with pytest.raises(ModelError, match="no input encoder"):
        model.set_encoder(enabled=True)
    assert model.run(3) == []


def test_step_budget_turns_the_encoder_off():
    """ENCODER_STEPS = n: the encoder runs n more steps (counting down), then clears its enable
    bit; 0 means no limit; a disabled encoder does not count."""
    model = identity_chip(1)
    model.set_encoder([ENCODER_RATE_ONE], [0], [(0, 0)], mode=EncoderMode.PHASE, enabled=False, steps=3)
    assert raster(model, 2, 8)[:, 0].tolist() == [0, 0]
    assert model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER_STEPS.value, 1)[0] == 3
    model.set_encoder(enabled=True)
    assert raster(model, 5, 8)[:, 0].tolist() == [1, 1, 1, 0, 0]
    assert model.read_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER.value, 3).tolist() == [0, 1, 0]
    model.set_encoder(enabled=True)                # steps is 0 now: no limit
    assert raster(model, 4, 8)[:, 0].tolist() == [1, 1, 1, 1]
    with pytest.raises(ModelError, match=r"encoder steps = 65536 is out of range: allowed \[0, 65535\]"):
        model.write_words(MemorySpace.CHIP, 0, ChipRegister.ENCODER_STEPS.value, [65536])


def test_disabled_encoder_holds_and_reset_state_reseeds():
    model = identity_chip(2)
    model.set_encoder([30000, 40000], [100, 200], [(0, 0), (0, 1)], mode=EncoderMode.PHASE, enabled=True)
    model.run(3)
    phases = model.encoder_phase.tolist()
    assert phases == [(100 + 3 * 30000) % 65536, (200 + 3 * 40000) % 65536]
    model.set_encoder(enabled=False)
    assert raster(model, 4, 8).sum() == 0 and model.encoder_phase.tolist() == phases
    model.set_encoder(mode=EncoderMode.BERNOULLI, enabled=True, seed=1234)
    first = raster(model, 5, 8)
    model.reset_state()                        # reloads the LFSR from the seed; keeps the channels
    assert model.step_count == 0 and model.encoder_lfsr == 1234
    assert np.array_equal(raster(model, 5, 8), first)
