"""The driver, on top of everything: the ``splitc`` command line (``cli``), the pipeline recipe
(``pipeline.default_passes``, ``compile_model``, ``plan_model``), the one validation step of all flags
(``validate``), manifest assembly and its JSON Schema, bundle writing, verification and the bundle report.

May import anything in ``splitc``; nothing imports it.
"""
