"""Privacy of the input: the leakage proxy per cut (``leakage``, pass ``privacy_profile``), inversion
attacks on what crosses the wire, and defences applied in the sending partition (``add_noise``).

May import: ``splitc.backends``, ``splitc.targets``, ``splitc.core`` and below; never another capability
(the planner reads ``ctx.privacy`` through the context, without importing this package).
"""
