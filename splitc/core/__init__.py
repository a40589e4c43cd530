"""The framework core: what every compile needs, whatever it is asked to do.

Lives here: the pass infrastructure (``pass_manager``), the compile context and options,
loading and tracing (``loader``), calibration data, the plan and artifact types
(``placement``: problem, plan, the planner interface; ``passes.candidates``/``passes.cut``:
cut candidates and partitions), the one accuracy rule (``accuracy``), the one sample runner
(``samples``), comparison helpers (``compare``), seeded training (``determinism``), progress
bars, and the generic graph passes in ``passes/`` (dead code, constant and shape folding,
profile, candidates, cut).

May import: ``splitc.runtime``, ``splitc.units``, ``splitc.errors`` and third-party libraries;
never a capability, a backend, a target or the driver. Modules directly in ``core`` never import
``core.passes``.
"""
