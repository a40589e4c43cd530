"""Compression at the cut: wire dtypes (``quantize_transfer``), bottleneck autoencoders
(``insert_bottleneck``), quantized partitions (``quantize``) and structured pruning (``prune``),
with their settings, shared state and contribution to the plan (``settings``).

May import: ``splitc.backends``, ``splitc.targets``, ``splitc.core`` and below; never another capability.
"""
