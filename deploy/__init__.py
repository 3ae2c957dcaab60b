"""Deployment: the integer network (IR), its numpy reference executor, its C99 export and the export's
per-op profiling on the target (``profiling.py``, ``profile_m7.py``), and its ONNX QDQ export for stock
tools (symmetric weight grid only; ``onnx_export.py``, ``export_onnx.py``)."""
