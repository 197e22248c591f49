"""Structured linear synapse operators and their lowering to dense weight matrices.

A NIR synapse chain (convolutions, pooling, flatten, dense and elementwise scaling between two
neuron populations) is a linear map from the source population's spikes to the target's input
currents. The chip integrates dense weight rows today, so the importer lowers a chain to one
``(pre.size, post.size)`` matrix; the operators are kept on the projection
(:attr:`Connection.structure`) so that a mapper for shared-weight convolution can use the
kernels instead of the matrix, and so that export writes the convolution back.

Every operator works on flat vectors in C order (``(channels, height, width)`` for 2-d maps,
``(channels, length)`` for 1-d maps): :meth:`apply` maps a batch ``(B, in_size)`` to
``(B, out_size)``. :func:`lower` composes a chain into its matrix and bias by applying it to the
identity, so the lowering and the float reference (:func:`neurofabric.host.nir_io.simulate_nir`)
use the same arithmetic. Semantics follow NIR (and PyTorch): cross-correlation, ``stride``,
``padding`` (zeros; ``"same"`` pads ``dilation * (k - 1)`` with the smaller half first),
``dilation`` and ``groups``; average pooling divides by the kernel area (padding included).
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["Conv", "Pool", "Flatten", "Dense", "Scale", "lower", "apply_chain", "kernel_words"]


def _pair(value, dims, name):
    values = np.atleast_1d(np.asarray(value)).astype(np.int64).ravel()
    if values.size == 1:
        values = np.repeat(values, dims)
    if values.size != dims:
        raise ValueError(f"{name} = {value!r} has {values.size} entries; a {dims}-d operator needs 1 or {dims}")
    return tuple(int(v) for v in values)


def _padding(padding, kernel, dilation, stride, dims):
    """((before, after), ...) per spatial dimension from an int, a tuple or 'same'/'valid'."""
    if isinstance(padding, bytes):
        padding = padding.decode()
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * dims
        if padding != "same":
            raise ValueError(f"padding = {padding!r}: allowed an integer, a tuple, 'same' or 'valid'")
        if any(s != 1 for s in stride):
            raise ValueError(f"padding = 'same' needs stride 1, not {stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in total)
    pads = _pair(padding, dims, "padding")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding = {padding!r} is out of range: allowed >= 0")
    return tuple((p, p) for p in pads)


@dataclass(frozen=True, eq=False)
class Conv:
    """A 1-d or 2-d convolution (cross-correlation) with optional per-channel bias.

    `weight`: ``(out_channels, in_channels / groups, *kernel)``; `in_shape`: ``(in_channels,
    *spatial)``; `stride`, `dilation`: per spatial dimension; `padding`: ``((before, after), ...)``
    per spatial dimension (build with :meth:`make` to accept NIR's forms)."""
    weight: np.ndarray
    in_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    bias: np.ndarray | None = None

    @classmethod
    def make(cls, weight, in_shape, stride=1, padding=0, dilation=1, groups=1, bias=None):
        """A validated Conv from NIR-style arguments (ints or tuples, padding 'same'/'valid')."""
        weight = np.asarray(weight, dtype=np.float64)
        if weight.ndim not in (3, 4):
            raise ValueError(f"weight has shape {weight.shape}: a convolution needs (out, in/groups, *kernel) "
                             "with a 1-d or 2-d kernel")
        dims = weight.ndim - 2
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != dims + 1:
            raise ValueError(f"input shape {in_shape} does not match a {dims}-d kernel: expected (channels, "
                             f"{'length' if dims == 1 else 'height, width'})")
        groups = int(np.asarray(groups).ravel()[0])
        if groups < 1 or in_shape[0] % groups or weight.shape[0] % groups:
            raise ValueError(f"groups = {groups} must divide the input channels ({in_shape[0]}) and the output "
                             f"channels ({weight.shape[0]})")
        if weight.shape[1] * groups != in_shape[0]:
            raise ValueError(f"weight has shape {weight.shape}: with groups = {groups} it takes "
                             f"{weight.shape[1] * groups} input channels, the input has {in_shape[0]}")
        stride = _pair(stride, dims, "stride")
        dilation = _pair(dilation, dims, "dilation")
        if min(stride) < 1 or min(dilation) < 1:
            raise ValueError(f"stride {stride} and dilation {dilation} must be >= 1")
        padding = _padding(padding, weight.shape[2:], dilation, stride, dims)
        if bias is not None:
            bias = np.broadcast_to(np.asarray(bias, dtype=np.float64).ravel(), (weight.shape[0],)).copy()
        conv = cls(weight, in_shape, stride, padding, dilation, groups, bias)
        if min(conv.out_shape[1:]) < 1:
            raise ValueError(f"the kernel {weight.shape[2:]} (dilation {dilation}) does not fit the padded input "
                             f"{in_shape[1:]}")
        return conv

    @property
    def out_shape(self):
        spatial = tuple((n + p0 + p1 - d * (k - 1) - 1) // s + 1 for n, (p0, p1), d, k, s in zip(
            self.in_shape[1:], self.padding, self.dilation, self.weight.shape[2:], self.stride))
        return (self.weight.shape[0],) + spatial

    def apply(self, x, bias=True):
        x = np.asarray(x, dtype=np.float64)
        batch = x.shape[0]
        w = self.weight
        if w.ndim == 3:         # 1-d as 2-d with a height of one
            w = w[:, :, None, :]
            x = x.reshape(batch, self.in_shape[0], 1, self.in_shape[1])
            stride, dilation, padding = (1,) + self.stride, (1,) + self.dilation, ((0, 0),) + self.padding
        else:
            x = x.reshape((batch,) + self.in_shape)
            stride, dilation, padding = self.stride, self.dilation, self.padding
        x = np.pad(x, ((0, 0), (0, 0)) + padding)
        out_shape = self.out_shape
        oh, ow = (1,) + out_shape[1:] if len(out_shape) == 2 else out_shape[1:]
        out = np.zeros((batch, w.shape[0], oh, ow))
        cin, cout = w.shape[1], w.shape[0] // self.groups
        for g in range(self.groups):
            xs = x[:, g * cin:(g + 1) * cin]
            for i in range(w.shape[2]):
                for j in range(w.shape[3]):
                    y0, x0 = i * dilation[0], j * dilation[1]
                    patch = xs[:, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0], x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
                    out[:, g * cout:(g + 1) * cout] += np.einsum("bchw,oc->bohw", patch, w[g * cout:(g + 1) * cout, :, i, j])
        if bias and self.bias is not None:
            out += self.bias[None, :, None, None]
        return out.reshape(batch, -1)

    def scaled(self, factor):
        return Conv(self.weight * factor, self.in_shape, self.stride, self.padding, self.dilation, self.groups,
                    None if self.bias is None else self.bias * factor)


@dataclass(frozen=True, eq=False)
class Pool:
    """2-d sum (`average` false) or average pooling over ``(channels, height, width)`` maps."""
    in_shape: tuple
    kernel: tuple
    stride: tuple
    padding: tuple
    average: bool = False

    @classmethod
    def make(cls, in_shape, kernel, stride=None, padding=0, average=False):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"input shape {in_shape}: 2-d pooling needs (channels, height, width)")
        kernel = _pair(kernel, 2, "kernel_size")
        stride = kernel if stride is None else _pair(stride, 2, "stride")
        if min(kernel) < 1 or min(stride) < 1:
            raise ValueError(f"kernel_size {kernel} and stride {stride} must be >= 1")
        pool = cls(in_shape, kernel, stride, _padding(padding, kernel, (1, 1), stride, 2), bool(average))
        if min(pool.out_shape[1:]) < 1:
            raise ValueError(f"the pooling kernel {kernel} does not fit the padded input {in_shape[1:]}")
        return pool

    def as_conv(self):
        """The depthwise convolution that computes this pooling."""
        c = self.in_shape[0]
        value = 1.0 / (self.kernel[0] * self.kernel[1]) if self.average else 1.0
        return Conv(np.full((c, 1) + self.kernel, value), self.in_shape, self.stride, self.padding, (1, 1), c)

    @property
    def out_shape(self):
        return self.as_conv().out_shape

    def apply(self, x, bias=True):
        return self.as_conv().apply(x)


@dataclass(frozen=True, eq=False)
class Flatten:
    """A change of shape only (C order keeps every element where it is)."""
    in_shape: tuple

    @property
    def out_shape(self):
        return (int(np.prod(self.in_shape)),)

    def apply(self, x, bias=True):
        return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = x @ weight.T + bias`` (NIR ``Linear`` / ``Affine``; `weight` is ``(out, in)``)."""
    weight: np.ndarray
    bias: np.ndarray | None = None

    @property
    def in_shape(self):
        return (self.weight.shape[1],)

    @property
    def out_shape(self):
        return (self.weight.shape[0],)

    def apply(self, x, bias=True):
        y = np.asarray(x, dtype=np.float64) @ self.weight.T
        return y + self.bias if bias and self.bias is not None else y

    def scaled(self, factor):
        return Dense(self.weight * factor, None if self.bias is None else self.bias * factor)


@dataclass(frozen=True, eq=False)
class Scale:
    """Elementwise ``y = x * scale`` (NIR ``Scale``; `scale` has the shape of the signal)."""
    scale: np.ndarray
    in_shape: tuple

    @property
    def out_shape(self):
        return self.in_shape

    def apply(self, x, bias=True):
        return np.asarray(x, dtype=np.float64) * self.scale.ravel()


def apply_chain(ops, x, bias=True):
    """The chain applied to a batch ``(B, in_size)`` of flat inputs."""
    for op in ops:
        x = op.apply(x, bias=bias)
    return x


def lower(ops, in_size):
    """The dense ``(in_size, out_size)`` matrix and the ``(out_size,)`` bias (or None) of a chain."""
    matrix = apply_chain(ops, np.eye(in_size), bias=False)
    has_bias = any(getattr(op, "bias", None) is not None for op in ops)
    bias = apply_chain(ops, np.zeros((1, in_size)))[0] if has_bias else None
    return matrix, bias


def kernel_words(ops):
    """Weights a shared-weight mapping of the chain stores: every kernel, dense and scale entry
    once (pooling and flatten store nothing)."""
    total = 0
    for op in ops:
        if isinstance(op, (Conv, Dense)):
            total += op.weight.size
        elif isinstance(op, Scale):
            total += op.scale.size
    return total
