"""Encoders from intensities to input spike rasters.

- :func:`rate_encode`: a deterministic phase accumulator per channel (integer arithmetic):
  ``acc += level`` every step, a spike when ``acc >= levels``, then ``acc -= levels``. A channel
  of intensity x in [0, 1] spikes ``floor(x * T + phase)`` times in T steps, evenly spaced: the
  least noisy rate code, and the one that makes converted networks accurate at small T.
- :func:`bernoulli_encode`: a spike with probability x in every step, from a seeded numpy RNG
  (reproducible; Poisson-like noise, as in most SNN papers).

Both take an array of shape (..., channels) of intensities in [0, 1] and return a bool raster of
shape (..., steps, channels), usable as Chip.run input events.
"""

import numpy as np

from neurofabric.host.network import RangeError, check_int

__all__ = ["rate_encode", "bernoulli_encode", "raster_to_pairs"]


def _intensities(x):
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise RangeError("intensities contain NaN or infinity; allowed [0, 1]", "intensities", None, (0, 1))
    if x.size and (x.min() < 0 or x.max() > 1):
        bad = x[(x < 0) | (x > 1)].flat[0]
        raise RangeError(f"intensities contain {bad}, out of range: allowed [0, 1]", "intensities", bad, (0, 1))
    return x


def rate_encode(x, steps, levels=256, phase=0.5):
    """Deterministic phase-accumulator rate code. `levels`: intensity resolution (x is rounded
    to ``round(x * levels)``; a level of `levels` spikes every step); `phase`: the accumulator's
    start as a fraction of `levels` (0.5 rounds the spike count to nearest)."""
    steps = check_int("steps", steps, 1, 1 << 24)
    levels = check_int("levels", levels, 1, 1 << 16)
    if not 0 <= phase < 1:
        raise RangeError(f"phase = {phase} is out of range: allowed [0, 1)", "phase", phase, (0, 1))
    level = np.round(_intensities(x) * levels).astype(np.int64)
    acc = np.full(level.shape, int(phase * levels), dtype=np.int64)
    out = np.zeros(level.shape[:-1] + (steps, level.shape[-1]), dtype=bool)
    for t in range(steps):
        acc += level
        fired = acc >= levels
        acc -= np.where(fired, levels, 0)
        out[..., t, :] = fired
    return out


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
