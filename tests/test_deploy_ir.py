"""The integer network (deploy/ir.py), its arena planner and its numpy reference: JSON round trip,
bit packing, the roundings against numpy, the fixed-point helper's error bound, validation messages,
arena plans, the float summation order, and that the seeded random graphs cover every case the C
kernels implement."""
import math
from fractions import Fraction

import numpy as np
import pytest

from deploy import arena, reference, synthetic
from deploy.ir import (FP16, FP32, Buffer, ChannelSlice, ConvPart, FixedPointEpilogue, FloatEpilogue, FloatToInt,
                       GlobalAvgPool, IntegerNetwork, PartOutput, Quantize, QuantizeOutput, canonical_float32,
                       float_to_half_bits, half_bits_to_float, int_format, mbqm, pack_bits, quantize_multiplier,
                       rdbpot, requantizer, round_half_even, srdhm, unpack_bits)

GRAPH_SEEDS = range(5)


@pytest.fixture(scope="module")
def graphs():
    return {seed: synthetic.random_network(seed) for seed in GRAPH_SEEDS}


def handmade_network(seed: int = 0) -> IntegerNetwork:
    """Built field by field, as a converter would: a 3×3 int conv (symmetric 4-bit) with an int residual
    and a fixed-point epilogue into signed int8, int and fp16 global average pools over signed values
    (2×2 maps: many rounding ties), and a classifier split into an int part and an fp16 part.
    Returns the network; its real multipliers are in ``metadata``."""
    rng = np.random.default_rng(seed)
    s8 = int_format(8, True, 0.05)
    y8 = int_format(8, True, 0.1)
    buffers = [Buffer("x.s8", "x", (0, 4), 2, 2, s8), Buffer("x.f16", "x", (0, 4), 2, 2, FP16),
               Buffer("y.s8", "y", (0, 4), 2, 2, y8), Buffer("p.s8", "p", (0, 4), 1, 1, y8),
               Buffer("p.f16", "p", (0, 4), 1, 1, FP16), Buffer("logits", "logits", (0, 5), 1, 1, FP32)]
    A = rng.uniform(0.005, 0.05, 4)
    C = rng.uniform(-3, 3, 4)
    R = np.full(4, s8.scale / y8.scale)
    conv = ConvPart(
        name="conv", compute="int", input=ChannelSlice("x.s8", 0, 4),
        weights=rng.integers(-7, 8, size=(4, 4, 3, 3)), padding=(1, 1), weight_bits=4, weight_grid="symmetric",
        residual=[ChannelSlice("x.s8", 0, 4)],
        outputs=[PartOutput("y.s8", 0, (0, 4), requantizer(A, C, R, lo=-127, hi=127, residual_levels=127))])
    linear_int = ConvPart(
        name="fc.int", compute="int", input=ChannelSlice("p.s8", 0, 4), layer="fc", layer_channels=(0, 3),
        weights=rng.integers(0, 256, size=(3, 4, 1, 1)), weight_bits=8, weight_grid="dorefa",
        outputs=[PartOutput("logits", 0, (0, 3), FloatEpilogue(rng.uniform(0.001, 0.01, 3), rng.uniform(-1, 1, 3)))])
    linear_fp16 = ConvPart(
        name="fc.fp16", compute="fp16", input=ChannelSlice("p.f16", 0, 4), layer="fc", layer_channels=(3, 5),
        weights=rng.standard_normal((2, 4, 1, 1)).astype(np.float16),
        outputs=[PartOutput("logits", 3, (0, 2), FloatEpilogue(np.ones(2), np.zeros(2)))])
    ops = [Quantize("quantize", [QuantizeOutput("x.s8", FloatToInt(-127 * 0.05, 127 * 0.05, 20.0, -127, 127)),
                                 QuantizeOutput("x.f16")]),
           conv, GlobalAvgPool("pool.int", "y.s8", "p.s8"), GlobalAvgPool("pool.fp16", "x.f16", "p.f16"),
           linear_int, linear_fp16]
    net = IntegerNetwork((4, 2, 2), buffers, ops, "logits",
                         metadata={"A": A.tolist(), "C": C.tolist(), "R": R.tolist()})
    return arena.plan_arena(net.validate())


def images_for(net: IntegerNetwork, count: int = 12, seed: int = 5) -> np.ndarray:
    return synthetic.random_images(seed, net.input_shape, count, special_values=True)


# -- JSON ------------------------------------------------------------------------------------------------------
def test_json_round_trip_is_exact(graphs):
    for seed, net in list(graphs.items()) + [("handmade", handmade_network())]:
        text = net.to_json()
        back = IntegerNetwork.from_json(text)
        assert back.to_json() == text, seed
        assert back.arena_bytes == net.arena_bytes
        assert [b.offset for b in back.buffers] == [b.offset for b in net.buffers]
        images = images_for(net)
        assert np.array_equal(reference.run(back, images).view(np.uint32), reference.run(net, images).view(np.uint32))
        assert '"schema": "adaptqnet/integer_network/2"' in text


def test_json_stores_int_weights_packed():
    net = handmade_network()
    conv = net.ops[1]
    weights = [op for op in __import__("json").loads(net.to_json())["ops"] if op["op"] == "conv"][0]["weights"]
    assert weights["packed_bits"] == 4 and weights["signed"] is True
    import base64
    assert len(base64.b64decode(weights["data"])) == conv.weights.size // 2


def test_json_errors_name_the_field():
    text = handmade_network().to_json()
    with pytest.raises(ValueError, match="schema"):
        IntegerNetwork.from_json(text.replace("integer_network/2", "integer_network/9"))
    with pytest.raises(ValueError, match="not valid JSON"):
        IntegerNetwork.from_json(text[:-10])
    import json
    data = json.loads(text)
    data["ops"][1]["weights"]["shape"] = [4, 4, 3, 4]
    with pytest.raises(ValueError, match=r"ops\[1\]\.weights: .* bytes do not hold"):
        IntegerNetwork.from_json(json.dumps(data))


# -- packing ----------------------------------------------------------------------------------------------------
def test_packing_is_lsb_first_twos_complement():
    assert pack_bits([1, 2, 3, 0, 3], 2, False).tolist() == [0b00111001, 0b11]
    assert pack_bits([-1, 7, -8], 4, True).tolist() == [0x7F, 0x08]
    assert pack_bits([-1, 1, 0, -1], 2, True).tolist() == [0b11000111]
    assert pack_bits([-128, 127, 5], 8, True).tolist() == [0x80, 0x7F, 5]
    with pytest.raises(ValueError, match="outside"):
        pack_bits([2], 2, True)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("signed", [False, True])
def test_packing_round_trip(bits, signed):
    rng = np.random.default_rng(bits * 2 + signed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    for count in (1, 7, 8, 9, 1001):
        codes = rng.integers(lo, hi + 1, size=count)
        packed = pack_bits(codes, bits, signed)
        assert packed.size == math.ceil(count * bits / 8)
        assert np.array_equal(unpack_bits(packed, bits, signed, count), codes)


# -- roundings --------------------------------------------------------------------------------------------------
def half_test_values() -> np.ndarray:
    """Ties, subnormals, overflow, signed zeros and infinities, then random bit patterns."""
    ulp = lambda e: 2.0 ** (e - 10)  # noqa: E731  spacing of halves in [2^e, 2^(e+1))
    special = [0.0, -0.0, np.inf, -np.inf, 65504.0, -65504.0, 65519.996, 65520.0, -65520.0, 70000.0, 1e30,
               2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 2.0 ** -24, 2.0 ** -25, -2.0 ** -25, 3 * 2.0 ** -25,
               5 * 2.0 ** -25, 2.0 ** -26, 1e-45, -1e-45, 2.0 ** -24 * 1.5, 6.1e-5, 1.0 + ulp(0) / 2,
               1.0 + 3 * ulp(0) / 2, -(1.0 + ulp(0) / 2), 2048.0 + 1.0, 2048.0 + 3.0, 0.1, 1 / 3]
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (halves[:-1] + halves[1:]) / 2  # every tie between neighbouring halves, exact in float32
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, size=300_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([np.array(special), mids, -mids]).astype(np.float32)
    return np.concatenate([values, bits.view(np.float32)])


def test_float_to_half_matches_numpy():
    x = half_test_values()
    ours = float_to_half_bits(x)
    finite_or_inf = ~np.isnan(x)
    with np.errstate(over="ignore"):
        theirs = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(ours[finite_or_inf], theirs[finite_or_inf])
    assert set(ours[~finite_or_inf].tolist()) == {0x7E00}
    edge = np.float32([-0.0, 65520.0, 2.0 ** -25, 3 * 2.0 ** -25])
    assert float_to_half_bits(edge).tolist() == [0x8000, 0x7C00, 0, 2]


def test_half_to_float_is_exact():
    bits = np.arange(2 ** 16, dtype=np.uint16)
    ours = half_bits_to_float(bits)
    theirs = bits.view(np.float16).astype(np.float32)
    same = np.isnan(theirs) | (ours.view(np.uint32) == theirs.view(np.uint32))
    assert same.all()


def test_round_half_even_ties_and_numpy():
    ties = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 2.4999998, -2.5000002, 8388607.5, 0.49999997])
    assert round_half_even(ties).tolist() == [0, 2, 2, 0, -2, -2, 4, -4, 2, -3, 8388608, 0]
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1000, 1000, 100_000), rng.integers(-2 ** 20, 2 ** 20, 1000) + 0.5])
    x = x.astype(np.float32)
    assert np.array_equal(round_half_even(x), np.rint(x).astype(np.int64))


def test_canonical_nan():
    x = np.array([np.nan, -np.nan, 1.0], dtype=np.float32)
    x[1] = np.uint32(0xFFC00001).view(np.float32)
    assert canonical_float32(x).view(np.uint32).tolist() == [0x7FC00000, 0x7FC00000, 0x3F800000]


# -- fixed point ------------------------------------------------------------------------------------------------
def _srdhm_exact(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul written from its definition with Python integers."""
    if a == b == -2 ** 31:
        return 2 ** 31 - 1
    ab = a * b
    t = ab + (2 ** 30 if ab >= 0 else 1 - 2 ** 30)
    return int(Fraction(t, 2 ** 31))  # int() of a Fraction truncates toward zero, as C's division does


def _rdbpot_exact(x: int, e: int) -> int:
    """x / 2^e rounded half away from zero."""
    q = Fraction(x, 2 ** e)
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), q))


def test_tflite_fixed_point_primitives_match_their_definitions():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 2000), [-2 ** 31, 2 ** 31 - 1, 0, 3, -3, -2 ** 31]])
    b = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 2000), [-2 ** 31, 2 ** 30, 2 ** 30, 2 ** 30, 2 ** 30, 5]])
    assert srdhm(a, b).tolist() == [_srdhm_exact(int(x), int(y)) for x, y in zip(a, b)]
    assert srdhm(np.array([-3]), np.array([2 ** 30])).tolist() == [-1]  # gemmlowp's nudge: -1.5 -> -1
    x = rng.integers(-2 ** 31, 2 ** 31, 3000)
    e = rng.integers(0, 32, 3000)
    assert rdbpot(x, e).tolist() == [_rdbpot_exact(int(v), int(k)) for v, k in zip(x, e)]
    assert rdbpot(np.array([5, -5, 6, -6]), np.array([1, 1, 2, 2])).tolist() == [3, -3, 2, -2]


def test_quantize_multiplier_is_tflites():
    for real, expected in [(0.5, (2 ** 30, 0)), (1.0, (2 ** 30, 1)), (0.75, (3 * 2 ** 29, 0)), (0.0, (0, 0)),
                           (-0.5, (-2 ** 30, 0)), (1 - 2 ** -40, (2 ** 30, 1)), (2.0 ** -40, (0, 0)),
                           (3.0, (3 * 2 ** 29, 2))]:
        assert quantize_multiplier(real) == expected, real
    rng = np.random.default_rng(4)
    for real in np.exp(rng.uniform(np.log(1e-9), np.log(1e3), 500)):
        m, s = quantize_multiplier(float(real))
        assert 2 ** 30 <= m < 2 ** 31 and -31 <= s <= 30
        assert abs(m * 2.0 ** (s - 31) - real) <= real * 2 ** -31


def test_requantizer_bounds_its_error():
    rng = np.random.default_rng(2)
    n = 300
    A = np.exp(rng.uniform(np.log(1e-5), np.log(20.0), n)) * rng.choice([-1, 1], n)
    A[:2] = [0.0, 2.0 ** -10]
    C = rng.uniform(-300, 300, n)
    bound = np.full(n, 2 ** 20)
    ep = requantizer(A, C, lo=-1000, hi=1000, acc_bound=bound)
    assert ep.lo[0] == ep.hi[0] == 1000 * np.sign(C[0]) * min(1, abs(round(C[0])) / 1000) or ep.lo[0] == ep.hi[0]
    assert ep.residual is None and np.all((ep.shift >= -31) & (ep.shift <= 30))
    for c in range(1, n):
        acc = rng.integers(-2 ** 20, 2 ** 20, 8)
        q = np.clip(mbqm(acc + int(ep.bias[c]), int(ep.multiplier[c]), int(ep.shift[c])), ep.lo[c], ep.hi[c])
        y = A[c] * acc.astype(np.float64) + C[c]
        slack = abs(A[c]) / 2 + np.abs(y) * 2.0 ** -30 + 0.5 + 1e-9
        assert np.all(np.abs(q - np.clip(y, -1000, 1000)) <= slack), c


def test_requantizer_residual_add_is_an_int8_add_that_never_clips_a_result_inside_the_clamp():
    rng = np.random.default_rng(3)
    n = 64
    A = rng.uniform(0.001, 0.05, n)
    C = rng.uniform(-30, 30, n)
    R = rng.uniform(0.2, 2.0, n)
    ep = requantizer(A, C, R, lo=0, hi=255, acc_bound=np.full(n, 2 ** 16), residual_levels=127)
    r = ep.residual
    assert np.all(r.t_lo >= -128) and np.all(r.t_hi <= 127)
    u = ep.residual.t_step()
    assert np.allclose(u, (255 + 127 * R.max()) / 127, rtol=1e-6)
    a_out, c_out = ep.affine()
    assert np.allclose(a_out, A, rtol=1e-6)
    net_q, ref = [], []
    for c in range(n):
        acc = rng.integers(-2 ** 16, 2 ** 16, 64)
        q_res = rng.integers(-127, 128, 64)
        y = mbqm(acc + int(ep.bias[c]), int(ep.multiplier[c]), int(ep.shift[c]))
        t = np.clip(y, r.t_lo[c], r.t_hi[c])
        total = mbqm(t << 20, int(r.t_multiplier[c]), int(r.t_shift[c])) + \
            mbqm(q_res << 20, int(r.skip_multiplier[c]), int(r.skip_shift[c]))
        q = np.clip(mbqm(total, int(r.output_multiplier[c]), int(r.output_shift[c])), 0, 255)
        exact = np.clip(A[c] * acc + C[c] + R[c] * q_res, 0, 255)
        assert np.all(np.abs(q - exact) <= 0.5 + u[c] / 2 + abs(A[c]) / 2 + 1e-3), c
        net_q.append(q)
        ref.append(exact)
    assert np.mean(np.abs(np.concatenate(net_q) - np.concatenate(ref)) <= 0.5 + 1e-9) > 0.5


def test_requantizer_rejects_multipliers_it_cannot_shift():
    with pytest.raises(ValueError, match="too large"):
        requantizer([2.0 ** 20], [0.0], lo=0, hi=1, acc_bound=2 ** 20)


def test_reference_fixed_point_epilogue_matches_float64():
    net = handmade_network()
    images = synthetic.random_images(3, net.input_shape, 64)
    _, buffers = reference.run(net, images, return_buffers=True)
    x = buffers["x.s8"].astype(np.float64)
    conv = net.ops[1]
    w = conv.weights.astype(np.float64)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = np.zeros((x.shape[0], 4, 2, 2))
    for ky in range(3):
        for kx in range(3):
            acc += np.einsum("nihw,oi->nohw", padded[:, :, ky:ky + 2, kx:kx + 2], w[:, :, ky, kx])
    A, C, R = (np.array(net.metadata[k])[None, :, None, None] for k in "ACR")
    y = A * acc + C + R * x
    got = buffers["y.s8"]
    u = conv.outputs[0].epilogue.residual.t_step()[None, :, None, None]
    assert np.all(np.abs(got - np.clip(y, -127, 127)) <= 0.5 + u / 2 + A / 2 + 1e-3)
    assert np.mean(got == np.clip(np.floor(y + 0.5), -127, 127)) > 0.5
    assert len(np.unique(got)) > 50  # the codes spread over the range: the check is not vacuous


def test_reference_int_pool_rounds_half_to_even():
    net = handmade_network()
    images = synthetic.random_images(4, net.input_shape, 64)
    _, buffers = reference.run(net, images, return_buffers=True)
    sums = buffers["y.s8"].astype(np.int64).sum(axis=(2, 3))
    pooled = buffers["p.s8"][:, :, 0, 0]
    assert np.array_equal(pooled, np.rint(sums / 4.0).astype(np.int64))
    assert np.any((sums % 4 == 2) & (sums < 0))  # negative ties occur


# -- the float summation order ---------------------------------------------------------------------------------------
def test_float_accumulation_follows_the_specified_order():
    rng = np.random.default_rng(3)
    buf = Buffer("x", "x", (0, 3), 4, 5, FP32)
    part = ConvPart(name="c", compute="fp32", input=ChannelSlice("x", 0, 3), outputs=[],
                    weights=rng.standard_normal((2, 3, 3, 3)).astype(np.float32), stride=(2, 1), padding=(1, 1))
    state = reference.Execution({"x": buf}, np.zeros((1, 3, 4, 5), np.float32))
    x = (rng.standard_normal((1, 3, 4, 5)) * 10 ** rng.uniform(-3, 3, (1, 3, 4, 5))).astype(np.float32)
    state.values["x"] = x
    acc = state.accumulator(part)
    w = part.weights
    naive_order_differs = False
    for co in range(2):
        for oy in range(acc.shape[2]):
            for ox in range(acc.shape[3]):
                total, terms = np.float32(0.0), []
                for ky in range(3):
                    for kx in range(3):
                        for ci in range(3):
                            iy, ix = oy * 2 - 1 + ky, ox - 1 + kx
                            if 0 <= iy < 4 and 0 <= ix < 5:
                                term = np.float32(x[0, ci, iy, ix] * w[co, ci, ky, kx])
                                total = np.float32(total + term)
                                terms.append(term)
                assert acc[0, co, oy, ox].view(np.uint32) == total.view(np.uint32)
                naive_order_differs |= np.float32(sum(sorted(terms))) != total
    assert naive_order_differs  # another order gives other bits: the comparison above can fail


def test_batch_gives_the_bytes_of_single_images(graphs):
    net = graphs[0]
    images = images_for(net, 6)
    batch = reference.run(net, images)
    single = np.concatenate([reference.run(net, image) for image in images])
    assert np.array_equal(batch.view(np.uint32), single.view(np.uint32))


def test_reference_returns_every_buffer(graphs):
    net = graphs[1]
    logits, buffers = reference.run(net, images_for(net, 3), return_buffers=True)
    assert set(buffers) == {b.name for b in net.buffers}
    for b in net.buffers:
        assert buffers[b.name].shape == (3, b.num_channels, b.height, b.width)
        lo, hi = b.format.code_range
        if b.format.is_int:
            assert buffers[b.name].min() >= lo and buffers[b.name].max() <= hi
    assert np.array_equal(logits, buffers[net.output].reshape(3, -1))


# -- coverage of the random graphs -------------------------------------------------------------------------------
def graph_features(net: IntegerNetwork) -> set:
    f, layers = set(), {}
    for op in net.ops:
        if isinstance(op, Quantize):
            f |= {"quantize_" + net.buffer(o.buffer).format.kind for o in op.outputs}
        elif isinstance(op, GlobalAvgPool):
            f.add("pool_" + ("int" if net.buffer(op.input).format.is_int else "float"))
        else:
            src = net.buffer(op.input.buffer)
            spatial = src.height * src.width
            layers.setdefault(op.layer, []).append((op.compute, src.format))
            if op.compute == "int":
                f.add(("int", src.format.bits, src.format.signed, op.weight_bits, op.weight_grid))
                f.add("weight_rows_" + ("aligned" if op.reduction_size * op.weight_bits % 8 == 0 else "unaligned"))
            else:
                f.add(op.compute + "_compute")
            if op.groups > 1:
                f.add("depthwise" if op.groups == op.out_channels == op.in_channels else "grouped")
            if op.kernel == (1, 1):
                f.add("pointwise" if spatial > 1 else "linear")
            if op.kernel == (3, 3) and op.stride == (2, 2) and op.padding == (1, 1) and op.groups == 1:
                f.add("conv3x3_strided_padded")
            f.add("relu6" if op.activation == (0.0, 6.0) else "no_activation" if op.activation is None else "other_act")
            kinds = {o.epilogue.kind for o in op.outputs}
            f |= {"epilogue_" + k for k in kinds}
            if op.compute == "int" and "float" in kinds:
                f.add("float_epilogue_of_int_compute")
            if op.compute != "int" and any(net.buffer(o.buffer).format.is_int for o in op.outputs):
                f.add("float_compute_into_int")
            if op.residual:
                f.add("residual_fixed_point" if "fixed_point" in kinds else "residual_float")
                f |= {"residual_from_" + net.buffer(s.buffer).format.kind for s in op.residual}
            if len(op.outputs) > 1:
                f.add("output_copies")
            if op.groups == op.out_channels > 1 and src.channels != (0, net.buffer(op.outputs[0].buffer).channels[1]):
                f.add("depthwise_channel_sliced_input")
    f |= {"split_mixed_precision" for parts in layers.values() if len(set(parts)) > 1}
    return f


def test_random_graphs_cover_every_case(graphs):
    covered = set().union(*(graph_features(net) for net in graphs.values()))
    int_cases = {("int", b, s, wb, g) for b in (8, 4, 2) for s in (False, True) for wb in (8, 4, 2)
                 for g in ("dorefa", "symmetric")}
    assert int_cases - covered == set()
    required = {"quantize_int", "quantize_fp16", "quantize_fp32", "pool_int", "pool_float", "fp16_compute",
                "fp32_compute", "depthwise", "grouped", "pointwise", "linear", "conv3x3_strided_padded", "relu6",
                "no_activation", "epilogue_fixed_point", "epilogue_float", "float_epilogue_of_int_compute",
                "float_compute_into_int", "residual_fixed_point", "residual_float", "residual_from_int",
                "residual_from_fp16", "residual_from_fp32", "output_copies", "depthwise_channel_sliced_input",
                "split_mixed_precision", "weight_rows_aligned", "weight_rows_unaligned"}
    assert required - covered == set()


# -- arena ------------------------------------------------------------------------------------------------------------
def live_sets(net: IntegerNetwork):
    """Per op, the buffers alive there, computed here from the ops' reads and writes."""
    first = {}
    last = {}
    for i, op in enumerate(net.ops):
        for name in op.writes():
            first.setdefault(name, i)
        for name in op.reads():
            last[name] = i
    last[net.output] = len(net.ops) - 1
    return [[b for b in net.buffers if first[b.name] <= i <= last[b.name]] for i in range(len(net.ops))]


def test_arena_plan_has_no_overlap_and_respects_the_peak(graphs):
    for net in list(graphs.values()) + [synthetic.mobilenetv2_network(precision="mixed", seed=1)]:
        assert all(b.offset % 4 == 0 and b.offset + b.size_bytes <= net.arena_bytes for b in net.buffers)
        peak = 0
        for alive in live_sets(net):
            peak = max(peak, sum(b.size_bytes for b in alive))
            spans = sorted((b.offset, b.offset + b.size_bytes) for b in alive)
            assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
        assert arena.peak_live_bytes(net) == peak
        assert peak <= net.arena_bytes < peak + 4 * len(net.buffers) + peak // 2


def test_arena_greedy_places_largest_first():
    # a chain: big (ops 0-1) -> mid (1-2) -> small (2-3) -> out; big and small may share bytes
    fmt = int_format(8, False, 1.0)
    buffers = [Buffer("big", "t0", (0, 1), 10, 10, fmt), Buffer("mid", "t1", (0, 1), 6, 10, fmt),
               Buffer("small", "t2", (0, 1), 3, 10, fmt), Buffer("out", "t3", (0, 1), 1, 1, FP32)]

    class Op:
        def __init__(self, reads, writes):
            self._r, self._w = reads, writes

        def reads(self):
            return self._r

        def writes(self):
            return self._w

    class Net:
        pass
    net = Net()
    net.buffers, net.output = buffers, "out"
    net.ops = [Op([], ["big"]), Op(["big"], ["mid"]), Op(["mid"], ["small"]), Op(["small"], ["out"])]
    offsets, size = arena.plan_offsets(net)
    assert offsets == {"big": 0, "mid": 100, "small": 0, "out": 32}
    assert size == 160 and arena.peak_live_bytes(net) == 160


def test_arena_check_rejects_overlap():
    net = handmade_network()
    alive_together = net.buffers[0], net.buffers[2]  # x.s8 is read by the conv that writes y.s8
    alive_together[1].offset = alive_together[0].offset
    with pytest.raises(ValueError, match="alive at the same time and overlap"):
        net.validate()


# -- validation ------------------------------------------------------------------------------------------------
def broken(mutate):
    net = handmade_network()
    mutate(net)
    return net


@pytest.mark.parametrize("mutate, message", [
    (lambda n: setattr(n.ops[1], "compute", "fp16"), "fp16 compute needs a fp16 input buffer"),
    (lambda n: n.ops[5].outputs.__setitem__(0, PartOutput("logits", 3, (0, 1), FloatEpilogue([1.0], [0.0]))),
     r"output channels \[1\] go to no buffer"),
    (lambda n: n.ops[5].outputs[0].__setattr__("channel_offset", 4), r"writes channels \[4, 6\) of buffer 'logits'"),
    (lambda n: n.ops[4].outputs[0].__setattr__("channel_offset", 1), "another output already wrote"),
    (lambda n: setattr(n.ops[1].outputs[0].epilogue, "bias", np.full(4, 2 ** 30 - 2 ** 10, np.int64)),
     "acc·2\\^p \\+ bias shifted left may reach 2\\^30"),
    (lambda n: setattr(n.ops[1].outputs[0].epilogue, "shift", np.full(4, 31, np.int32)), "shifts must lie in -31..30"),
    (lambda n: setattr(n.ops[1].outputs[0].epilogue.residual, "skip_shift", np.ones(4, np.int32)),
     "residual skip_shift must lie in -31..0"),
    (lambda n: setattr(n.ops[1].outputs[0].epilogue, "residual", None), "residual add's constants are required"),
    (lambda n: setattr(n.ops[1], "weights", n.ops[1].weights * 2),
     r"symmetric 4-bit weight codes must lie in \[-7, 7\]"),
    (lambda n: setattr(n.ops[1], "activation", (0.0, 6.0)), "cannot be folded"),
    (lambda n: setattr(n.ops[4], "layer_channels", (1, 4)), "do not partition"),
    (lambda n: n.ops.insert(1, n.ops.pop(2)), "that no earlier op has written"),
    (lambda n: n.buffers.append(Buffer("spare", "s", (0, 1), 1, 1, FP32)), "never written"),
    (lambda n: setattr(n.ops[0].outputs[1], "to_int", FloatToInt(0, 1, 1, 0, 1)),
     "to_int is required for int buffers and only"),
    (lambda n: setattr(n.ops[0].outputs[0], "to_int", FloatToInt(-127, 127, 2.0 ** 20, -127, 127)), "below 2\\^24"),
    (lambda n: setattr(n.buffers[0], "format", int_format(8, True, 0.05, levels=128)), "levels 128 outside 1..127"),
    (lambda n: setattr(n.ops[2], "output", "p.f16"), "output format"),
    (lambda n: setattr(n.ops[5].outputs[0], "epilogue", FixedPointEpilogue([1, 1], [1, 1], [0, 0], [0, 0], [0, 0])),
     "needs a FloatEpilogue"),
    (lambda n: setattr(n.ops[1], "weights", np.zeros((4, 4, 40, 40), np.int16)), "a 2x2 input gives no output"),
])
def test_validation_names_the_problem(mutate, message):
    with pytest.raises(ValueError, match=message):
        broken(mutate).validate()


def test_validation_rejects_accumulators_that_could_overflow():
    fmt = int_format(8, False, 1.0)
    part = ConvPart(name="wide", compute="int", input=ChannelSlice("x", 0, 40000),
                    weights=np.full((1, 40000, 1, 1), 255), weight_bits=8, weight_grid="dorefa",
                    outputs=[PartOutput("y", 0, (0, 1), FloatEpilogue([1.0], [0.0]))])
    net = IntegerNetwork((40000, 1, 1), [Buffer("x", "x", (0, 40000), 1, 1, fmt), Buffer("y", "y", (0, 1), 1, 1, FP32)],
                         [Quantize("q", [QuantizeOutput("x", FloatToInt(0, 255, 1, 0, 255))]), part], "y")
    with pytest.raises(ValueError, match=r"\|acc\| may reach 2\^31"):
        net.validate()
