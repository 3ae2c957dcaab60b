"""numpy executor of an ``IntegerNetwork``: the specification the C export must match byte for byte.

Images run as one batch; every operation is elementwise over the batch, so a batch gives the same
bytes as one image at a time. Int parts compute exact integers (the products and sums go through
float64 matrix products, exact because validation bounds every partial sum below 2^31 < 2^53).
Float parts compute in float32 in the order the IR prescribes: vectorised over images, output
channels and positions, with a Python loop over the reduction index in (ky, kx, ci) order, so each
``acc += x·w`` is one float32 multiply and one float32 add, both rounded, exactly as the C code
compiled with ``-ffp-contract=off`` does.

Buffers are held as int64 codes (int), uint16 half bits (fp16) or float32 (fp32).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from deploy.ir import (ACCUMULATOR_LIMIT, Buffer, ConvPart, FixedPointEpilogue, Format, GlobalAvgPool, IntegerNetwork,
                       Quantize, canonical_float32, clamp, float_to_codes, float_to_half_bits, half_bits_to_float, mbqm)


def store(fmt: Format, z: np.ndarray, to_int=None) -> np.ndarray:
    """float32 values → what a buffer of ``fmt`` holds (codes, half bits or canonical float32)."""
    if fmt.is_int:
        return float_to_codes(z, to_int)
    if fmt.kind == "fp16":
        return float_to_half_bits(z)
    return canonical_float32(z)


def real_values(fmt: Format, held: np.ndarray) -> np.ndarray:
    """What a buffer holds → float32 real values (int: (float)q · scale)."""
    if fmt.is_int:
        return held.astype(np.float32) * np.float32(fmt.scale)
    if fmt.kind == "fp16":
        return half_bits_to_float(held)
    return held


def operand_values(fmt: Format, held: np.ndarray) -> np.ndarray:
    """What a conv reads from a buffer: int codes, or the floats."""
    return held if fmt.is_int else real_values(fmt, held)


def _patches(x: np.ndarray, part: ConvPart) -> np.ndarray:
    """(N, C, H, W) → (N, groups, (C/groups)·kh·kw, positions), the reduction index in (ci, ky, kx)
    order, zeros at padding."""
    (kh, kw), (sh, sw), (ph, pw) = part.kernel, part.stride, part.padding
    n, c, h, w = x.shape
    out_h, out_w = part.output_size(h, w)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :out_h, :out_w]
    g = part.groups
    cols = windows.reshape(n, g, c // g, out_h, out_w, kh, kw).transpose(0, 1, 5, 6, 2, 3, 4)
    return cols.reshape(n, g, kh * kw * (c // g), out_h * out_w)


class Execution:
    """Buffer contents while a network runs; the synthetic-network builder steps it op by op."""

    def __init__(self, buffers: Mapping[str, Buffer], images: np.ndarray):
        images = np.asarray(images, dtype=np.float32)
        self.images = images[None] if images.ndim == 3 else images
        self.buffers = buffers
        self.values: Dict[str, np.ndarray] = {}

    @property
    def batch(self) -> int:
        return self.images.shape[0]

    def _target(self, name: str) -> np.ndarray:
        if name not in self.values:
            b = self.buffers[name]
            dtype = {"int": np.int64, "fp16": np.uint16, "fp32": np.float32}[b.format.kind]
            self.values[name] = np.zeros((self.batch, b.num_channels, b.height, b.width), dtype=dtype)
        return self.values[name]

    def read(self, name: str, first: int = 0, count: Optional[int] = None) -> np.ndarray:
        held = self.values[name]
        count = held.shape[1] - first if count is None else count
        return held[:, first:first + count]

    def run(self, op) -> None:
        # inf and NaN are legitimate float32 results here; numpy's warnings about them are noise.
        with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
            self._run(op)

    def _run(self, op) -> None:
        if isinstance(op, Quantize):
            for out in op.outputs:
                b = self.buffers[out.buffer]
                self._target(b.name)[:] = store(b.format, self.images[:, b.channels[0]:b.channels[1]], out.to_int)
        elif isinstance(op, ConvPart):
            self._run_conv(op)
        elif isinstance(op, GlobalAvgPool):
            self._run_pool(op)
        else:
            raise ValueError(f"reference: unknown op type {type(op).__name__}")

    def accumulator(self, part: ConvPart) -> np.ndarray:
        """The part's accumulators, (N, out, H_out, W_out): int64 for int compute, float32 otherwise."""
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            return self._accumulator(part)

    def _accumulator(self, part: ConvPart) -> np.ndarray:
        src = self.buffers[part.input.buffer]
        x = operand_values(src.format, self.read(src.name, part.input.offset, part.input.channels))
        out_h, out_w = part.output_size(src.height, src.width)
        cols = _patches(x, part)
        g, k = part.groups, part.reduction_size
        weights = part.effective_weights().transpose(0, 2, 3, 1).reshape(g, part.out_channels // g, k)
        if part.compute == "int":
            acc = np.matmul(weights.astype(np.float64), cols.astype(np.float64))
            if acc.size and np.abs(acc).max() >= ACCUMULATOR_LIMIT:
                raise ValueError(f"reference: conv {part.name!r} accumulator reached 2^31")
            acc = acc.astype(np.int64)
        else:
            acc = np.zeros((x.shape[0], g, part.out_channels // g, cols.shape[-1]), dtype=np.float32)
            for i in range(k):
                acc += cols[:, :, None, i, :] * weights[None, :, :, i, None]
        return acc.reshape(x.shape[0], part.out_channels, out_h, out_w)

    def _residual(self, part: ConvPart) -> Tuple[np.ndarray, np.ndarray]:
        """Residual codes (int64, 0 where the segment is float) and real values (float32)."""
        codes, reals = [], []
        for seg in part.residual:
            fmt = self.buffers[seg.buffer].format
            held = self.read(seg.buffer, seg.offset, seg.channels)
            codes.append(held if fmt.is_int else np.zeros(held.shape, dtype=np.int64))
            reals.append(real_values(fmt, held))
        return np.concatenate(codes, axis=1), np.concatenate(reals, axis=1)

    def _run_conv(self, part: ConvPart) -> None:
        acc = self.accumulator(part)
        res_codes, res_reals = self._residual(part) if part.residual else (None, None)
        per_channel = lambda a: np.asarray(a)[None, :, None, None]  # noqa: E731
        for out in part.outputs:
            o0, o1 = out.part_channels
            fmt = self.buffers[out.buffer].format
            ep = out.epilogue
            if isinstance(ep, FixedPointEpilogue):
                held = fixed_point(ep, acc[:, o0:o1], None if res_codes is None else res_codes[:, o0:o1])
            else:
                acc_f = acc[:, o0:o1].astype(np.float32)
                z = acc_f * per_channel(ep.scale) + per_channel(ep.offset)
                if part.activation is not None:
                    z = clamp(z, np.float32(part.activation[0]), np.float32(part.activation[1]))
                if res_reals is not None:
                    z = z + res_reals[:, o0:o1]
                held = store(fmt, z, ep.to_int)
            self._target(out.buffer)[:, out.channel_offset:out.channel_offset + o1 - o0] = held

    def _run_pool(self, op: GlobalAvgPool) -> None:
        src = self.buffers[op.input]
        held = self.read(op.input)
        n = src.height * src.width
        flat = held.reshape(held.shape[0], held.shape[1], n)
        if src.format.is_int:
            total = flat.sum(axis=2)
            q, r = np.divmod(total, n)
            q = q + ((2 * r > n) | ((2 * r == n) & (q % 2 == 1)))
            result = q
        else:
            x = real_values(src.format, flat)
            s = np.zeros(x.shape[:2], dtype=np.float32)
            for p in range(n):
                s += x[:, :, p]
            result = store(src.format, s / np.float32(n))
        self._target(op.output)[:] = result.reshape(held.shape[0], held.shape[1], 1, 1)


def fixed_point(ep: FixedPointEpilogue, acc: np.ndarray, res_codes: Optional[np.ndarray]) -> np.ndarray:
    """The fixed-point epilogue (ir module docstring) on int64 accumulators (N, channels, H, W)."""
    c = lambda a: np.asarray(a, dtype=np.int64)[None, :, None, None]  # noqa: E731
    y = mbqm((acc << c(ep.acc_shift)) + c(ep.bias), c(ep.multiplier), c(ep.shift))
    if ep.residual is not None:
        r = ep.residual
        t = clamp(y, c(r.t_lo), c(r.t_hi))
        total = (mbqm(t << r.left_shift, c(r.t_multiplier), c(r.t_shift))
                 + mbqm(res_codes << r.left_shift, c(r.skip_multiplier), c(r.skip_shift)))
        y = mbqm(total, c(r.output_multiplier), c(r.output_shift))
    return clamp(y, c(ep.lo), c(ep.hi))


def debug_view(fmt: Format, held: np.ndarray) -> np.ndarray:
    """Buffer contents for people: int32 codes, float16 or float32."""
    if fmt.is_int:
        return held.astype(np.int32)
    if fmt.kind == "fp16":
        return held.view(np.float16)
    return held


def run(network: IntegerNetwork, images: np.ndarray, *, return_buffers: bool = False
        ) -> Union[np.ndarray, Tuple[np.ndarray, Dict[str, np.ndarray]]]:
    """Execute ``network`` on float32 images (N, C, H, W) or one image (C, H, W).

    Returns the float32 logits (N, outputs); with ``return_buffers`` also a dict buffer name →
    (N, C_b, H, W) contents (``debug_view``)."""
    network.validate()
    images = np.asarray(images)
    expected = tuple(network.input_shape)
    if images.shape[-3:] != expected or images.ndim not in (3, 4):
        raise ValueError(f"reference: images of shape {images.shape}, expected (N, {', '.join(map(str, expected))})")
    state = Execution(network.buffer_map, images)
    for op in network.ops:
        state.run(op)
    logits = state.values[network.output].reshape(state.batch, -1).copy()
    if not return_buffers:
        return logits
    buffers = {name: debug_view(network.buffer(name).format, held) for name, held in state.values.items()}
    return logits, buffers
