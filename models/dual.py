"""Dual-core layers: a layer's output channels split between two processing units, each part at its own
precision (stage 2 of the search).

A *part* is ``models.mapping.Part(unit, precision, c0, c1)``: output channels [c0, c1) run on ``unit``
at ``precision`` (its weights and its copy of the input, docs/design.md §2). An *option* is a list of
parts covering all output channels; it is named like a mapping entry (``"int8"``: the whole layer on
the primary unit; ``"m7:int8[0:48]+m4:int4[48:96]"``: a split; ``"m4:int8[0:96]"``: the whole layer
on the secondary unit) and written to mapping.json as its dual-core object.

Both forms are one class per layer type, subclassing the mixed-precision layers (so ``mixed_layers``,
``arch_parameters``, ``set_temperature``, the hardware loss and the state_dict keys ``weight``/``bias``/
``alpha``/``act_clip`` work unchanged):

* **fixed split** (one option): out[:, c0:c1] = op(Q_p(x), Q_p(W)[c0:c1]) per part; a depthwise (grouped)
  part reads only its own input channels. One op per part, the arithmetic of the deployed network.
* **searchable** (several options): α has one logit per option, π = softmax(α/T). Because a conv or
  linear layer is linear per output channel,

      out_c = Σ_opt π_opt · op(Q_p(opt,c)(x), Q_p(opt,c)(W))_c = Σ_p m_p[c] · op(Q_p(x), Q_p(W))_c,
      m_p[c] = Σ_opt π_opt · 1[channel c runs at p in opt],

  so one op per distinct precision gives the exact mixture for any π (not an approximation like the
  composite mode of the single-core search). The bias is added once: Σ_p m_p[c] = 1.

``mode = "fixed"`` (what ``set_precision`` and the tensor-analysis tracer set) runs the whole layer at
``fixed_precision``, as the base layers do.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MIXED_LAYER_TYPES, MixedPrecisionConv2d, MixedPrecisionLinear, MixedPrecisionMixin
from .mapping import Part, entry_parts, is_single_unit, option_entry, option_label
from .network import mixed_layers
from .precisions import PRECISION_ORDER, PRECISIONS, canonical_precisions
from .registry import build_from_spec

DUAL_MODE = "dual"
Entry = Union[str, Mapping]


# ----------------------------------------------------------------------------------------------------
# Options: mapping entries checked against a layer
# ----------------------------------------------------------------------------------------------------
def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def option_parts(layer: nn.Module, entry: Entry, where: str = "mapping", name: str = "") -> List[Part]:
    """A mapping value (precision, option key or dual-core object) as Parts, checked against the
    layer: the ranges cover its output channels, and a grouped conv splits on group boundaries."""
    parts = entry_parts(name or layer.layer_name, _out_channels(layer), entry, where)
    groups = getattr(layer, "groups", 1)
    per_group = _out_channels(layer) // max(1, groups)
    if groups > 1 and any(p.c0 % per_group or p.c1 % per_group for p in parts):
        raise ValueError(f"{where}: layer {name or layer.layer_name}: channel ranges "
                         f"{[[p.c0, p.c1] for p in parts]} must fall on group boundaries (every "
                         f"{per_group} channels)")
    return parts


def _widest(parts: Sequence[Part]) -> str:
    """The part precision with the most bits (PRECISION_ORDER runs from widest to narrowest)."""
    return min((p.precision for p in parts), key=PRECISION_ORDER.index)


def _runs(parts: Sequence[Part]) -> List[Tuple[str, int, int]]:
    """Contiguous channel runs at one precision (neighbouring parts at the same precision are one op)."""
    runs: List[Tuple[str, int, int]] = []
    for p in sorted(parts, key=lambda q: q.c0):
        if runs and runs[-1][0] == p.precision and runs[-1][2] == p.c0:
            runs[-1] = (p.precision, runs[-1][1], p.c1)
        else:
            runs.append((p.precision, p.c0, p.c1))
    return runs


# ----------------------------------------------------------------------------------------------------
# The layers
# ----------------------------------------------------------------------------------------------------
class DualOptionMixin:
    """Options, α over them, and the two forwards (fixed split / exact mixture)."""

    def _init_options(self, options: Sequence[Sequence[Part]], alpha: Optional[Sequence[float]] = None) -> None:
        if not options:
            raise ValueError(f"{self._where()}: no dual-core options")
        labels = [option_label(o) for o in options]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self._where()}: options repeat: {labels}")
        self.option_parts: List[List[Part]] = [list(o) for o in options]
        self.option_keys: List[str] = labels
        values = [0.0] * len(options) if alpha is None else [float(v) for v in alpha]
        if len(values) != len(options):
            raise ValueError(f"{self._where()}: {len(values)} initial logits for {len(options)} options")
        device = self.weight.device
        self.alpha = nn.Parameter(torch.tensor(values, dtype=torch.float32, device=device))
        c = _out_channels(self)
        masks = torch.zeros(len(options), len(self.precisions), c, device=device)
        for i, parts in enumerate(options):
            for p in parts:
                masks[i, self.precisions.index(p.precision), p.c0:p.c1] = 1.0
        # m_p[c] = π @ masks: the share of channel c computed at precision p
        self.register_buffer("option_masks", masks.view(len(options), -1), persistent=False)
        self.mode = DUAL_MODE
        self.fixed_precision = None
        self.active_mask = None

    # -- selection ----------------------------------------------------------------------------------
    @property
    def is_split_fixed(self) -> bool:
        return len(self.option_keys) == 1

    def derive(self) -> str:
        return self.option_keys[int(torch.argmax(self.alpha.detach()))]

    def derived_parts(self) -> List[Part]:
        return self.option_parts[int(torch.argmax(self.alpha.detach()))]

    def mapping_entry(self) -> Entry:
        """The derived option as mapping.json stores it."""
        return option_entry(self.derived_parts(), _out_channels(self))

    def expected_cost(self, costs: torch.Tensor) -> torch.Tensor:
        costs = torch.as_tensor(costs, dtype=self.alpha.dtype, device=self.alpha.device)
        if costs.shape != self.alpha.shape:
            raise ValueError(f"{self._where()}: cost vector has {costs.numel()} entries, expected "
                             f"{len(self.option_keys)} (one per dual-core option)")
        return (self.probs(sample=False) * costs).sum()

    def set_mode(self, mode: str) -> None:
        """'composite' / 'exact' search over the options (both run the exact mixture); 'fixed' keeps
        the derived option only (a fixed split)."""
        if mode in ("composite", "exact", DUAL_MODE):
            self.mode = DUAL_MODE
        elif mode == "fixed":
            self.restrict_options([self.derive()])
        else:
            raise ValueError(f"{self._where()}: unknown mode {mode!r}; expected composite, exact or fixed")

    def restrict_options(self, keys: Sequence[str]) -> None:
        """Keep only ``keys`` (their logits, the shared weight and the clips of precisions that stay);
        one key gives the fixed split form."""
        unknown = [k for k in keys if k not in self.option_keys]
        if unknown:
            raise ValueError(f"{self._where()}: unknown options {unknown}; options: {self.option_keys}")
        keep = [self.option_keys.index(k) for k in keys]
        options = [self.option_parts[i] for i in keep]
        alpha = [float(self.alpha.detach()[i]) for i in keep]
        clips = {p: float(self.clip_for(p).detach()) for p in self.precisions if not PRECISIONS[p].is_float}
        self.precisions = canonical_precisions([p.precision for o in options for p in o], self._where())
        ints = [p for p in self.precisions if not PRECISIONS[p].is_float]
        default = sum(clips.values()) / len(clips) if clips else 6.0
        self.act_clip = nn.Parameter(torch.tensor([clips.get(p, default) for p in ints],
                                                  device=self.weight.device))
        self._init_options(options, alpha)

    # -- the stored input (docs/design.md §3.6) ------------------------------------------------------
    @property
    def _reads_channel_slices(self) -> bool:
        """A depthwise part reads only its own channels, so the input is held per channel as that
        channel's part reads it; any other layer reads whole copies, and the widest is the one kept."""
        return getattr(self, "op_kind", "") == "dwconv" and self.out_channels == self.in_channels

    def _stored_split(self, x: torch.Tensor, parts: Sequence[Part]) -> torch.Tensor:
        if not self._reads_channel_slices:
            return self.quantize_input(x, _widest(parts))
        return torch.cat([self.quantize_input(x[:, c0:c1], p) for p, c0, c1 in _runs(parts)], dim=1)

    def stored_input(self, x: torch.Tensor, probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x as this layer holds it: fixed split, each channel as its part reads it (depthwise) or the
        widest part's copy; searching, the π-weighted mixture of those over the options."""
        if self.mode == "fixed":
            return super().stored_input(x)
        if self.is_split_fixed:
            return self._stored_split(x, self.option_parts[0])
        pi = self.probs() if probs is None else probs
        if self._reads_channel_slices:  # channel c at precision p with weight m_p[c], as the forward mixes
            shares = (pi @ self.option_masks).view(len(self.precisions), -1)
            terms = [self.quantize_input(x, p) * self._channel_view(shares[i], x)
                     for i, p in enumerate(self.precisions)]
        else:  # option o keeps its widest copy: weight Σ π_o over the options whose widest is p
            weight = {p: 0.0 for p in self.precisions}
            for i, parts in enumerate(self.option_parts):
                weight[_widest(parts)] = weight[_widest(parts)] + pi[i]
            terms = [self.quantize_input(x, p) * w for p, w in weight.items() if torch.is_tensor(w)]
        return sum(terms[1:], terms[0])

    def stored_precision(self) -> Optional[str]:
        if self.mode == "fixed":
            return super().stored_precision()
        if not self.is_split_fixed:
            return None
        parts = self.option_parts[0]
        if self._reads_channel_slices and len({p.precision for p in parts}) > 1:
            return None
        return _widest(parts)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            return self._forward_mixed(x)  # whole layer at fixed_precision (tracing, set_precision)
        if self.is_split_fixed:
            return self._forward_split(x, self.option_parts[0])
        return self._forward_options(x)

    def _forward_split(self, x: torch.Tensor, parts: Sequence[Part]) -> torch.Tensor:
        runs = _runs(parts)
        if len(runs) == 1:  # one precision: the whole input at it is both what the op and the skip read
            p = runs[0][0]
            xq = self.quantize_input(x, p)
            self._report_stored_input(xq)
            return self._op(xq, self.quantize_weight(p))
        if self._stored_input_sink is not None:
            self._report_stored_input(self._stored_split(x, parts))
        outs = [self._part_op(x, p, c0, c1) for p, c0, c1 in runs]
        return torch.cat(outs, dim=self._channel_dim)

    def _forward_options(self, x: torch.Tensor) -> torch.Tensor:
        # The stored skip input quantizes x again rather than reusing the ops' tensors: sharing them
        # reorders the float sums of x's gradient, which moves training by a rounding error.
        pi = self.probs()
        if self._stored_input_sink is not None:
            self._report_stored_input(self.stored_input(x, pi))
        shares = (pi @ self.option_masks).view(len(self.precisions), -1)
        out = None
        for i, p in enumerate(self.precisions):
            y = self._op(self.quantize_input(x, p), self.quantize_weight(p))
            term = y * self._channel_view(shares[i], y)
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        keys = self.option_keys if len(self.option_keys) <= 4 else self.option_keys[:3] + ["..."]
        return super().extra_repr() + f", options={len(self.option_keys)} {keys}"


class DualOptionConv2d(DualOptionMixin, MixedPrecisionConv2d):
    """MixedPrecisionConv2d (dense, pointwise, depthwise or grouped) over dual-core options."""

    _channel_dim = 1

    @staticmethod
    def _channel_view(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (y.dim() - 2)))

    def _part_op(self, x: torch.Tensor, precision: str, c0: int, c1: int) -> torch.Tensor:
        per_out = self.out_channels // self.groups
        per_in = self.in_channels // self.groups
        g0, g1 = c0 // per_out, c1 // per_out
        if self.groups > 1:
            x = x[:, g0 * per_in:g1 * per_in]  # a group reads only its own input channels
        xq = self.quantize_input(x, precision)
        w = self.quantize_weight(precision)[c0:c1]
        b = self.bias[c0:c1] if self.bias is not None else None
        padding = self.padding
        if self.padding_mode != "zeros":
            xq = F.pad(xq, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return F.conv2d(xq, w, b, self.stride, padding, self.dilation, g1 - g0 if self.groups > 1 else 1)

    def forward(self, x):
        return DualOptionMixin.forward(self, x)


class DualOptionLinear(DualOptionMixin, MixedPrecisionLinear):
    """MixedPrecisionLinear over dual-core options (output features split between the units)."""

    _channel_dim = -1

    @staticmethod
    def _channel_view(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return v

    def _part_op(self, x: torch.Tensor, precision: str, c0: int, c1: int) -> torch.Tensor:
        b = self.bias[c0:c1] if self.bias is not None else None
        return F.linear(self.quantize_input(x, precision), self.quantize_weight(precision)[c0:c1], b)

    def forward(self, x):
        return DualOptionMixin.forward(self, x)


DUAL_LAYER_TYPES = (DualOptionConv2d, DualOptionLinear)


# ----------------------------------------------------------------------------------------------------
# Converting layers (sharing the weight tensors; BatchNorm is a sibling module and stays)
# ----------------------------------------------------------------------------------------------------
def _clone_layer(src: MixedPrecisionMixin, cls, precisions: Sequence[str]) -> nn.Module:
    """A new ``cls`` layer with ``src``'s geometry and settings that shares its weight and bias."""
    if isinstance(src, nn.Conv2d):
        new = cls(src.in_channels, src.out_channels, src.kernel_size, stride=src.stride, padding=src.padding,
                  dilation=src.dilation, groups=src.groups, bias=src.bias is not None, precisions=precisions,
                  signed_input=src.signed_input, name=src.layer_name)
        new.padding_mode = src.padding_mode
        new._reversed_padding_repeated_twice = src._reversed_padding_repeated_twice
    else:
        new = cls(src.in_features, src.out_features, bias=src.bias is not None, precisions=precisions,
                  signed_input=src.signed_input, name=src.layer_name)
    new.weight = src.weight
    new.bias = src.bias
    for attr in ("temperature", "gumbel", "weight_per_channel", "weight_grid", "training"):
        setattr(new, attr, getattr(src, attr))
    return new.to(src.weight.device)


def _carry_clips(new: MixedPrecisionMixin, src: MixedPrecisionMixin,
                 clip_init: Optional[Mapping[str, float]] = None) -> List[str]:
    """Copy the PACT clips of precisions both layers have; others from ``clip_init``, else the mean of
    the source's clips. Returns the precisions that got that fallback (nothing better known)."""
    src_clips = {p: float(src.clip_for(p).detach()) for p in src.precisions if not PRECISIONS[p].is_float}
    fallback = sum(src_clips.values()) / len(src_clips) if src_clips else 6.0
    guessed, values = [], []
    for p in new.precisions:
        if PRECISIONS[p].is_float:
            continue
        if p in src_clips:
            values.append(src_clips[p])
        elif clip_init and p in clip_init:
            values.append(float(clip_init[p]))
        else:
            values.append(fallback)
            guessed.append(p)
    with torch.no_grad():
        new.act_clip.data = torch.tensor(values, dtype=new.act_clip.dtype, device=new.act_clip.device)
    return guessed


def to_dual_layer(layer: MixedPrecisionMixin, options: Sequence[Entry], alpha: Optional[Sequence[float]] = None,
                  clip_init: Optional[Mapping[str, float]] = None, name: str = "",
                  where: str = "dual options") -> nn.Module:
    """A dual-option layer (one option: the fixed split form) sharing ``layer``'s weight and bias.
    ``options`` are mapping values (precision, option key or dual-core object)."""
    if not isinstance(layer, MIXED_LAYER_TYPES):
        raise ValueError(f"{where}: {name or type(layer).__name__} is not a mixed-precision layer")
    name = name or layer.layer_name
    parts = [option_parts(layer, o, where, name) for o in options]
    precisions = canonical_precisions([p.precision for o in parts for p in o], f"{where}: layer {name}")
    cls = DualOptionConv2d if isinstance(layer, nn.Conv2d) else DualOptionLinear
    new = _clone_layer(layer, cls, precisions)
    new.layer_name = name
    new.guessed_clips = _carry_clips(new, layer, clip_init)
    new._init_options(parts, alpha)
    return new


def to_plain_layer(layer: MixedPrecisionMixin, precision: str) -> nn.Module:
    """The ordinary fixed-precision layer (sharing the weight) for a layer run whole on the primary unit."""
    cls = MixedPrecisionConv2d if isinstance(layer, nn.Conv2d) else MixedPrecisionLinear
    new = _clone_layer(layer, cls, [precision])
    new.layer_name = layer.layer_name
    _carry_clips(new, layer)
    new.set_precision(precision)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_names(model: nn.Module, names: Iterable[str], where: str) -> Dict[str, nn.Module]:
    layers = dict(mixed_layers(model))
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"{where}: unknown layers {', '.join(unknown)} (not mixed-precision layers of the model)")
    return layers


def open_dual_layers(model: nn.Module, options: Mapping[str, Sequence[Entry]],
                     alpha: Optional[Mapping[str, Sequence[float]]] = None,
                     clip_init: Optional[Mapping[str, Mapping[str, float]]] = None,
                     where: str = "dual options") -> Dict[str, nn.Module]:
    """Make the named layers searchable over their dual-core options, in place. Returns the new layers."""
    layers = _check_names(model, options, where)
    out = {}
    for name, opts in options.items():
        new = to_dual_layer(layers[name], opts, (alpha or {}).get(name), (clip_init or {}).get(name), name, where)
        _replace(model, name, new)
        out[name] = new
    return out


def apply_dual_mapping(model: nn.Module, mapping: Mapping[str, Entry], where: str = "mapping") -> None:
    """Fix every named layer at its entry, in place: a precision → the ordinary layer with that one
    precision; a split or a whole layer on the secondary unit → the fixed split form. Searchable dual layers collapse
    to their entry (which must be one of their options); shared weights and clips carry over."""
    layers = _check_names(model, mapping, where)
    for name, entry in mapping.items():
        layer = layers[name]
        parts = option_parts(layer, entry, where, name)
        label = option_label(parts)
        if len(parts) == 1 and parts[0].unit is None:
            if isinstance(layer, DUAL_LAYER_TYPES) or tuple(layer.precisions) != (label,):
                _replace(model, name, to_plain_layer(layer, label))  # one precision, as a derived layer
            else:
                layer.set_precision(label)
        elif isinstance(layer, DUAL_LAYER_TYPES) and label in layer.option_keys:
            layer.restrict_options([label])
        else:
            _replace(model, name, to_dual_layer(layer, [entry], name=name, where=where))


def dual_mapping(model: nn.Module) -> Dict[str, Entry]:
    """Every layer's mapping.json value: its fixed or derived precision, or its dual-core entry."""
    out: Dict[str, Entry] = {}
    for name, layer in mixed_layers(model):
        if isinstance(layer, DUAL_LAYER_TYPES):
            out[name] = layer.mapping_entry()
        else:
            out[name] = layer.fixed_precision if layer.mode == "fixed" else layer.derive()
    return out


def label_entries(model: nn.Module, labels: Mapping[str, str]) -> Dict[str, Entry]:
    """mapping.json values for option labels (precisions or option keys, as ``derive`` returns them)."""
    layers = _check_names(model, labels, "labels")
    return {n: option_entry(option_parts(layers[n], label, "labels", n), _out_channels(layers[n]))
            for n, label in labels.items()}


def derive_dual_network(supernet: nn.Module, mapping: Optional[Mapping[str, Entry]] = None) -> nn.Module:
    """A copy of the supernet fixed at ``mapping`` (default: each layer's derived option)."""
    net = copy.deepcopy(supernet)
    apply_dual_mapping(net, dual_mapping(supernet) if mapping is None else mapping, "derived mapping")
    net.spec = dict(getattr(supernet, "spec", {}))
    return net


def entry_precisions(layer: nn.Module, entry: Entry, name: str = "") -> List[str]:
    """The distinct precisions a mapping entry uses on a layer (in PRECISION_ORDER)."""
    return list(canonical_precisions([p.precision for p in option_parts(layer, entry, "mapping", name)]))


def build_dual_network(spec: Mapping, mapping: Mapping[str, Entry]) -> nn.Module:
    """Rebuild a network saved with a dual-core mapping (then ``load_state_dict`` its weights)."""
    plain = {n: [e] for n, e in mapping.items() if is_single_unit(e)}
    model = build_from_spec(spec, precisions={n: plain.get(n, ["int8"]) for n in mapping})
    apply_dual_mapping(model, mapping, "mapping")
    return model


def dual_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in mixed_layers(model) if isinstance(m, DUAL_LAYER_TYPES)]
