"""Encoders from intensities to input spike rasters.

- :func:`rate_encode`: a deterministic phase accumulator per channel (integer arithmetic):
  ``acc += level`` every step, a spike when ``acc >= levels``, then ``acc -= levels``. A channel
  of intensity x in [0, 1] spikes ``floor(x * T + phase)`` times in T steps, evenly spaced: the
  least noisy rate code, and the one that makes converted networks accurate at small T.
- :func:`bernoulli_encode`: a spike with probability x in every step, from a seeded numpy RNG
  (reproducible; Poisson-like noise, as in most SNN papers).

Both take an array of shape (..., channels) of intensities in [0, 1] and return a bool raster of
shape (..., steps, channels), usable as Chip.run input events.

The chip's own input encoder (:meth:`Chip.encode`, docs/semantics.md "Input encoder") runs the
same two codes on chip from 16-bit words: :func:`phase_encoder_words` gives the PHASE-mode
words that reproduce :func:`rate_encode` exactly (same quantisation, accumulator scaled by
``65536 / levels``); :func:`bernoulli_encoder_words` the BERNOULLI-mode rates (probability
``rate / 65536`` per step, from the chip's LFSR, not numpy's generator).
"""

import numpy as np

from neurofabric.hdl.protocol import ENCODER_RATE_ONE
from neurofabric.host.network import RangeError, check_int

__all__ = ["rate_encode", "bernoulli_encode", "raster_to_pairs", "phase_encoder_words",
           "bernoulli_encoder_words"]


def _intensities(x):
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise RangeError("intensities contain NaN or infinity; allowed [0, 1]", "intensities", None, (0, 1))
    if x.size and (x.min() < 0 or x.max() > 1):
        bad = x[(x < 0) | (x > 1)].flat[0]
        raise RangeError(f"intensities contain {bad}, out of range: allowed [0, 1]", "intensities", bad, (0, 1))
    return x


def _phase_levels(x, levels, phase):
    """The phase code's quantisation: (level per channel, the accumulators' start), both in
    units of 1 / `levels`."""
    levels = check_int("levels", levels, 1, 1 << 16)
    if isinstance(phase, bool) or not isinstance(phase, (int, float, np.integer, np.floating)) \
            or not 0 <= phase < 1:
        raise RangeError(f"phase = {phase!r} is out of range: allowed [0, 1)", "phase", phase, (0, 1))
    return np.round(_intensities(x) * levels).astype(np.int64), int(phase * levels)


def rate_encode(x, steps, levels=256, phase=0.5):
    """Deterministic phase-accumulator rate code. `levels`: intensity resolution (x is rounded
    to ``round(x * levels)``; a level of `levels` spikes every step); `phase`: the accumulator's
    start as a fraction of `levels` (0.5 rounds the spike count to nearest)."""
    steps = check_int("steps", steps, 1, 1 << 24)
    level, start = _phase_levels(x, levels, phase)
    acc = np.full(level.shape, start, dtype=np.int64)
    out = np.zeros(level.shape[:-1] + (steps, level.shape[-1]), dtype=bool)
    for t in range(steps):
        acc += level
        fired = acc >= levels
        acc -= np.where(fired, levels, 0)
        out[..., t, :] = fired
    return out


def phase_encoder_words(x, levels=256, phase=0.5):
    """The chip's PHASE-mode (rate, phase) words for intensities `x`: the quantisation of
    :func:`rate_encode` scaled to 16 bits, so the chip spikes exactly as ``rate_encode(x,
    steps, levels, phase)`` does. `levels` must be a power of two (it divides 65536)."""
    levels = check_int("levels", levels, 1, ENCODER_RATE_ONE)
    if levels & (levels - 1):
        raise RangeError(f"levels = {levels} must be a power of two in [1, {ENCODER_RATE_ONE}] for the "
                         "chip's encoder", "levels", levels, (1, ENCODER_RATE_ONE))
    level, start = _phase_levels(x, levels, phase)
    scale = ENCODER_RATE_ONE // levels
    return level * scale, np.full(level.shape, start * scale, dtype=np.int64)


def bernoulli_encoder_words(x):
    """The chip's BERNOULLI-mode rate words for intensities `x`: ``round(x * 65536)`` (a spike
    when a 16-bit draw in [0, 65535] is < rate: probability rate / 65536, 1 for x = 1)."""
    return np.round(_intensities(x) * ENCODER_RATE_ONE).astype(np.int64)


def bernoulli_encode(x, steps, seed=0):
    """A spike with probability x per step, from ``numpy.random.default_rng(seed)``."""
    steps = check_int("steps", steps, 1, 1 << 24)
    x = _intensities(x)
    rng = np.random.default_rng(seed)
    shape = x.shape[:-1] + (steps, x.shape[-1])
    return rng.random(shape) < x[..., None, :]


def raster_to_pairs(raster):
    """A (steps, channels) raster as an (E, 2) array of (step, index), in step order."""
    t, i = np.nonzero(np.asarray(raster))
    return np.stack([t, i], axis=1).astype(np.int64)
