"""Targets: what a tier is. The built-in catalog (``catalog/*.yaml``), target files and their loader
(``target``), the latency cost model of a node on a tier (``cost_model``) and the machine profiler
behind ``splitc profile`` (``machine_profiler``).

May import: ``splitc.core``, ``splitc.runtime``, ``splitc.units``, ``splitc.errors``; never a backend,
a capability or the driver.
"""
