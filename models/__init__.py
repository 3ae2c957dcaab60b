"""The networks AdaptQNet searches, built from mixed-precision layers (docs/design.md §2-3).

``build_model(name, **kwargs)`` / ``build_from_spec(spec)`` build a registered network; every conv and
linear layer in it is a mixed-precision layer. The package is the bottom of the project's layers:
``models`` ← ``tensor_analysis`` ← ``Search_CIFAR10``, ``deploy``, ``benchmarks``.

  precisions   the five precisions and their order     quantizers  DoReFa, PACT, FP16 functions
  mixture      the fused Σπ·Q(x) node, compile policy  layers      the mixed-precision conv / linear
  network      whole-network helpers (α, modes, ...)   mapping     precision mappings, mapping.json
  dual         layers split over two cores (stage 2)   registry    build_model, model specs
  pretrained   torchvision ImageNet weights             blocks      shared blocks and stride rules
  files        atomic writes, JSON, checkpoints         formats     every file kind's schema string
"""
from . import efficientnet, mobilenetv1, mobilenetv2, mobilenetv3  # noqa: F401  (they register themselves)
from .network import allowed_precisions
from .pretrained import PretrainedUnavailable, load_imagenet_pretrained, load_torchvision_state_dict
from .registry import build_from_spec, build_model, list_models, register_model, torchvision_name

__all__ = ["build_model", "build_from_spec", "list_models", "register_model", "torchvision_name",
           "load_torchvision_state_dict", "load_imagenet_pretrained", "PretrainedUnavailable",
           "allowed_precisions"]
