"""The generic graph passes, one per file, in pipeline order: ``eliminate_dead_code``, ``fold_constants``,
``profile``, ``fold_static_shapes``, ``candidates``, ``cut``.

Each analysis owns the ``node.meta`` keys it writes as module constants (``profile.FLOPS``,
``candidates.POSITION``, ``cut.PARTITION_OUTPUT``); other passes read them by those names.
May import: the rest of ``splitc.core`` (never the other way round), ``splitc.units``, ``splitc.errors``.
"""
