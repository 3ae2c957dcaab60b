"""The quantizers (docs/design.md §2): values on the grid, round-to-nearest, straight-through gradients,
PACT's clip gradient and signed form, IEEE half, and the fused mixture agreeing with its parts on
both the eager and the compiled path."""
import warnings

import numpy as np
import pytest
import torch

from models import mixture, quantizers
from models.mixture import mix_inputs, pact_levels, quantize_input_at
from models.precisions import PRECISION_ORDER, PRECISIONS
from models.quantizers import quantize_activation_pact, quantize_fp16, quantize_weight_dorefa, round_ste

INT_BITS = range(2, 9)


@pytest.fixture
def compile_mode():
    """Set the compile mode for one test and restore the previous one after it."""
    before = mixture.get_compile()
    yield mixture.set_compile
    mixture.set_compile(before)


def reference_pact(x, clip, bits, signed):
    """PACT written out from the paper with autograd doing the calculus (ties aside, the fused
    version must agree with it in values and gradients)."""
    levels = pact_levels(bits, signed)
    a = clip.abs() + 1e-8
    y = torch.minimum(x, a)
    y = torch.maximum(y, -a) if signed else torch.clamp_min(y, 0.0)
    step = a / levels
    return y + (torch.round(y / step) * step - y).detach()


def reference_mixture(x, probs, clips, precisions, signed):
    out, ci = 0, 0
    for i, p in enumerate(precisions):
        if p == "fp32":
            q = x
        elif p == "fp16":
            q = quantize_fp16(x)
        else:
            q = reference_pact(x, clips[ci], PRECISIONS[p].bits, signed)
            ci += 1
        out = out + probs[i] * q
    return out


# -- values on the grid --------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", INT_BITS)
def test_dorefa_weights_lie_on_the_grid(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 4, 3, 3) * 0.3
    q = quantize_weight_dorefa(w, bits)
    levels = 2 ** bits - 1
    idx = (q + 1) * levels / 2  # grid {2i/L − 1} ↦ i
    assert torch.allclose(idx, idx.round(), atol=1e-4)
    assert idx.round().min() >= 0 and idx.round().max() <= levels
    assert q.min() >= -1 - 1e-6 and q.max() <= 1 + 1e-6
    assert q.unique().numel() <= 2 ** bits
    # projecting a grid value onto the grid again changes nothing
    assert torch.equal(2 * torch.round(levels * (q + 1) / 2) / levels - 1, q)


@pytest.mark.parametrize("bits", INT_BITS)
@pytest.mark.parametrize("signed", [False, True])
def test_pact_values_on_grid_in_range_and_idempotent(bits, signed):
    torch.manual_seed(bits)
    x = torch.randn(4000) * 3
    clip = torch.tensor(2.5)
    q = quantize_activation_pact(x, clip, bits, signed)
    levels = pact_levels(bits, signed)
    idx = q / (2.5 / levels)
    assert torch.allclose(idx, idx.round(), atol=1e-3)
    lo = -2.5 if signed else 0.0
    assert q.min() >= lo - 1e-6 and q.max() <= 2.5 + 1e-6
    assert q.unique().numel() <= (2 * levels + 1 if signed else levels + 1) <= 2 ** bits
    assert torch.equal(quantize_activation_pact(q, clip, bits, signed), q)


def test_signed_pact_keeps_negative_values_and_unsigned_drops_them():
    x = torch.tensor([-3.0, -0.9, -0.5, 0.5, 0.9, 3.0])
    clip = torch.tensor(2.0)
    signed = quantize_activation_pact(x, clip, 4, signed=True)
    # 2^(k-1)-1 = 7 levels per side: step 2/7
    step = 2.0 / 7
    expected = torch.clamp(x, -2, 2).div(step).round().mul(step)
    assert torch.allclose(signed, expected)
    assert (signed[:3] < 0).all()
    unsigned = quantize_activation_pact(x, clip, 4, signed=False)
    assert (unsigned[:3] == 0).all() and (unsigned[3:] > 0).all()
    assert pact_levels(4, True) == 7 and pact_levels(4, False) == 15


def test_rounding_is_to_nearest_not_floor():
    step = 1.0 / 255
    x = torch.tensor([3.6 * step, 3.4 * step, 10.6 * step])
    q = quantize_activation_pact(x, torch.tensor(1.0), 8)
    assert torch.allclose(q, torch.tensor([4 * step, 3 * step, 11 * step]))
    assert torch.equal(round_ste(torch.tensor([0.6, 1.4, -0.6])), torch.tensor([1.0, 1.0, -1.0]))

    # DoReFa: an element at 0.6 of a step above grid index 5 goes to index 6
    bits, levels = 4, 15
    m = float(torch.tanh(torch.tensor(2.0)))  # the channel's max |tanh w|, from its 2.0 entry
    t = (5 + 0.6) / levels
    w = torch.tensor([[2.0, float(np.arctanh((2 * t - 1) * m))]])
    q = quantize_weight_dorefa(w, bits)
    assert q[0, 1].item() == pytest.approx(2 * 6 / levels - 1, abs=1e-6)


def test_fp16_matches_ieee_half(compile_mode):
    compile_mode("off")  # the compiled fp16 term is checked against eager below
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0, 1e4, 3000),
                             rng.uniform(-1e-6, 1e-6, 1000),  # half subnormals
                             [65504.0, 65520.0, 1e6, -1e6, 2.0 ** -25, 0.0, -0.0]]).astype(np.float32)
    with np.errstate(over="ignore"):  # beyond 65504 is inf in half: that is the point
        expected = torch.from_numpy(values.astype(np.float16).astype(np.float32))
    x = torch.from_numpy(values)
    assert torch.equal(quantize_fp16(x), expected)
    assert torch.equal(quantize_input_at(x, "fp16", None, signed=True), expected)


# -- straight-through gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_pact_gradient_passes_inside_and_stops_outside(signed):
    x = torch.tensor([-3.0, -2.0, -1.0, 0.5, 1.0, 1.99, 2.0, 3.0], requires_grad=True)
    clip = torch.tensor(2.0, requires_grad=True)
    upstream = torch.arange(1.0, 9.0)
    quantize_activation_pact(x, clip, 8, signed).backward(upstream)
    if signed:
        inside = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0.0])
        clip_grad = (7 + 8) - (1 + 2)  # x ≥ a counts +1, x ≤ −a counts −1
    else:
        inside = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0.0])
        clip_grad = 7 + 8
    assert torch.equal(x.grad, upstream * inside)
    # PACT: d y_q / d a = 1 where x ≥ a (the tie x = a included)
    assert clip.grad.item() == pytest.approx(clip_grad)


def test_weight_and_fp16_gradients_are_straight_through():
    torch.manual_seed(0)
    w = (torch.randn(6, 5) * 0.5).requires_grad_()
    upstream = torch.randn(6, 5)
    quantize_weight_dorefa(w, 4).backward(upstream)
    # the same expression without rounding has the same gradient: round is the identity backward
    w2 = w.detach().clone().requires_grad_()
    t = torch.tanh(w2) / (2 * quantizers.dorefa_scale(w2)) + 0.5
    (2 * t - 1).backward(upstream)
    assert torch.allclose(w.grad, w2.grad, atol=1e-6)

    x = torch.randn(30, requires_grad=True)
    for fn in (quantize_fp16, lambda v: quantize_input_at(v, "fp16", None, signed=False)):
        x.grad = None
        fn(x).backward(upstream.flatten())
        assert torch.equal(x.grad, upstream.flatten())


def test_unsupported_bits_raise_with_the_allowed_range():
    x = torch.randn(4)
    for fn, args in ((quantize_activation_pact, (x, torch.tensor(1.0), 9)),
                     (quantize_activation_pact, (x, torch.tensor(1.0), 1)),
                     (quantize_weight_dorefa, (x, 16)),
                     (quantize_weight_dorefa, (x, 3.5))):
        with pytest.raises(ValueError, match=r"unsupported bit width .*2\.\.8"):
            fn(*args)


# -- the fused mixture ----------------------------------------------------------------------------------
MIXTURES = [PRECISION_ORDER, ("int8",), ("fp16",), ("fp16", "int4"), ("int8", "int2")]


def run_mixture(fn, x, alpha, clips, precisions, signed, upstream):
    x = x.detach().clone().requires_grad_()
    alpha = alpha.detach().clone().requires_grad_()
    clips = clips.detach().clone().requires_grad_()
    y = fn(x, torch.softmax(alpha, 0), clips, precisions, signed)
    grads = torch.autograd.grad((y * upstream).sum(), [x, alpha, clips], allow_unused=True)
    return [y.detach()] + [torch.zeros(0) if g is None else g for g in grads]


def mixture_inputs(precisions, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 3
    alpha = torch.randn(len(precisions), generator=g)
    n_int = sum(not PRECISIONS[p].is_float for p in precisions)
    clips = torch.rand(n_int, generator=g) * 2 + 1.5
    upstream = torch.randn(n, generator=g)
    return x, alpha, clips, upstream


@pytest.mark.parametrize("precisions", MIXTURES)
@pytest.mark.parametrize("signed", [False, True])
def test_eager_mixture_matches_its_parts(compile_mode, precisions, signed):
    compile_mode("off")
    x, alpha, clips, upstream = mixture_inputs(precisions, 3000, len(precisions) + signed)
    ours = run_mixture(mix_inputs, x, alpha, clips, precisions, signed, upstream)
    ref = run_mixture(reference_mixture, x, alpha, clips, precisions, signed, upstream)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not mixture._compiler_present(torch.device("cpu")), reason="no C++ compiler for inductor")
def test_compiled_mixture_matches_eager_in_values_and_gradients(compile_mode):
    """The fused path is the default where a compiler exists: it must compute what the eager path
    computes. Inputs above COMPILE_MIN_NUMEL so the compiled graphs really run."""
    n = mixture.COMPILE_MIN_NUMEL * 3
    for precisions in (PRECISION_ORDER, ("int8",)):  # the search and the fixed-QAT graphs
        for signed in (False, True):
            x, alpha, clips, upstream = mixture_inputs(precisions, n, 7 + signed)
            x[:50] = 0.0  # ReLU zeros and
            x[50:100] = clips[0] if len(clips) else 1.0  # values at the clip: the ties
            compile_mode("off")
            eager = run_mixture(mix_inputs, x, alpha, clips, precisions, signed, upstream)
            compile_mode("on")
            fused = run_mixture(mix_inputs, x, alpha, clips, precisions, signed, upstream)
            for a, b in zip(eager, fused):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), (precisions, signed)
            if precisions == ("int8",):  # fixed int8 through the fused graph is the same function
                assert torch.equal(fused[0], quantize_activation_pact(x, clips[0], 8, signed))


def test_failed_compilation_falls_back_to_eager_with_one_warning(compile_mode, monkeypatch):
    compile_mode("auto")
    monkeypatch.setattr(mixture, "_compiler_present", lambda device: True)

    def broken(name, fn):
        raise RuntimeError("no working C++ compiler")
    monkeypatch.setattr(mixture, "_compiled_fn", broken)
    x, alpha, clips, upstream = mixture_inputs(PRECISION_ORDER, mixture.COMPILE_MIN_NUMEL * 2, 3)
    with pytest.warns(UserWarning, match="using the eager path"):
        got = run_mixture(mix_inputs, x, alpha, clips, PRECISION_ORDER, True, upstream)
    assert not mixture.compile_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then quietly eager
        again = run_mixture(mix_inputs, x, alpha, clips, PRECISION_ORDER, True, upstream)
    compile_mode("off")
    ref = run_mixture(mix_inputs, x, alpha, clips, PRECISION_ORDER, True, upstream)
    for a, b, c in zip(got, again, ref):
        assert torch.equal(a, c) and torch.equal(b, c)

    compile_mode("on")  # asked for explicitly: the failure is the caller's to see
    with pytest.raises(RuntimeError, match="no working C"):
        run_mixture(mix_inputs, x, alpha, clips, PRECISION_ORDER, True, upstream)


def test_compile_mode_names_are_checked(compile_mode, monkeypatch):
    with pytest.raises(ValueError, match="unknown compile mode 'fast'.*auto, on, off"):
        compile_mode("fast")
    compile_mode("auto")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert not mixture.compile_enabled(torch.device("cpu"))  # no compiler: eager, no attempt
    compile_mode("off")
    assert not mixture.compile_enabled()


def test_mixture_keeps_channels_last_layout_and_values(compile_mode):
    """The CUDA runtime trains channels_last: the fused node must not reorder (copy) activations."""
    compile_mode("off")
    x, alpha, clips, upstream = mixture_inputs(PRECISION_ORDER, 2 * 6 * 5 * 5, 11)
    x, upstream = x.view(2, 6, 5, 5), upstream.view(2, 6, 5, 5)
    plain = run_mixture(mix_inputs, x, alpha, clips, PRECISION_ORDER, True, upstream)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = mix_inputs(cl, torch.softmax(alpha, 0), clips, PRECISION_ORDER, True)
    y.backward(upstream)  # a gradient in the other layout
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.detach(), plain[0]) and torch.equal(cl.grad, plain[1])


# -- the symmetric weight grid (issue 14) ------------------------------------------------------------------
@pytest.mark.parametrize("bits", INT_BITS)
def test_symmetric_weights_lie_on_the_narrow_signed_grid(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 4, 3, 3) * 0.3
    m = 2 ** (bits - 1) - 1
    q = quantizers.quantize_weight_symmetric(w, bits)
    codes = quantizers.symmetric_codes(w, bits)
    assert torch.allclose(q * m, codes, atol=1e-5)
    assert codes.min() >= -m and codes.max() <= m
    # tanh(w)/max|tanh(w)| reaches ±1 in every channel, so each channel uses its extreme code
    assert torch.equal(codes.abs().flatten(1).amax(1), torch.full((8,), float(m)))
    # the scaled weight is the grid times the least-squares scale, and weight_codes / grid_divisor say so
    s = quantizers.weight_scale(w, bits, grid="symmetric")
    scaled = quantizers.quantize_weight_scaled(w, bits, grid="symmetric")
    assert torch.allclose(scaled, s * quantizers.weight_codes(w, bits, grid="symmetric")
                          / quantizers.grid_divisor(bits, "symmetric"), atol=1e-6)


def test_symmetric_int2_is_ternary_with_zero_and_dorefa_int2_has_no_zero():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * 0.2
    sym = quantizers.quantize_weight_grid(w, 2, grid="symmetric")
    assert set(sym.unique().tolist()) == {-1.0, 0.0, 1.0}
    dorefa = quantizers.quantize_weight_grid(w, 2, grid="dorefa")
    assert 0.0 not in set(torch.round(dorefa * 3).unique().tolist())


def test_symmetric_weight_gradient_reaches_the_float_weight():
    torch.manual_seed(1)
    w = (torch.randn(4, 8) * 0.3).requires_grad_()
    out = quantizers.quantize_weight_scaled(w, 4, grid="symmetric")
    (out * torch.randn_like(out)).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    # straight through the rounding: the unscaled grid's gradient is that of M·tanh(w)/max|tanh| / M
    w2 = w.detach().clone().requires_grad_()
    quantizers.quantize_weight_symmetric(w2, 4).sum().backward()
    w3 = w.detach().clone().requires_grad_()
    (torch.tanh(w3) / quantizers.dorefa_scale(w3)).sum().backward()
    assert torch.allclose(w2.grad, w3.grad, atol=1e-6)


def test_unknown_weight_grid_is_refused():
    with pytest.raises(ValueError, match="unknown weight grid 'odd'"):
        quantizers.quantize_weight_scaled(torch.ones(2, 2), 4, grid="odd")


def test_layers_and_spec_carry_the_symmetric_grid():
    from models import build_from_spec, build_model
    from models.network import mixed_layers
    from models.registry import check_same_grid
    model = build_model("mobilenetv2", width_mult=0.25, input_size=32, num_classes=10, weight_grid="symmetric")
    assert model.spec["weight_grid"] == "symmetric"
    assert all(layer.weight_grid == "symmetric" for _, layer in mixed_layers(model))
    rebuilt = build_from_spec(model.spec)
    assert all(layer.weight_grid == "symmetric" for _, layer in mixed_layers(rebuilt))
    dorefa = build_model("mobilenetv2", width_mult=0.25, input_size=32, num_classes=10)
    assert "weight_grid" not in dorefa.spec  # files from before the option read as DoReFa
    with pytest.raises(ValueError, match="weight grid 'dorefa'.*'symmetric'"):
        check_same_grid(model.spec, dorefa.spec, "mapping.json")
    layer = next(layer for _, layer in mixed_layers(model))
    layer.set_precision("int2")
    w = layer.quantize_weight("int2")
    s = quantizers.weight_scale(layer.weight, 2, grid="symmetric")
    assert torch.allclose(torch.round(w / s), w / s, atol=1e-4) and set(torch.round(w / s).unique().tolist()) <= {-1., 0., 1.}
