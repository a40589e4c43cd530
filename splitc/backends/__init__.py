"""Backends: ONNX export of partitions and the artifacts serving stacks load (Triton model repositories,
TensorRT build recipes, FaaS handlers), chosen per tier by ``emit``.

May import: ``splitc.targets``, ``splitc.core``, ``splitc.runtime`` and below; never a capability or the driver.
"""
