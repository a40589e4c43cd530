"""Early exits: internal classifiers that let a request leave before the end of the model.

Lives here: the ``--exits`` settings, the heads, their training and threshold calibration, the exits'
contribution to the plan (``heads.plan_exits``), the passes ``train_exits`` and ``insert_exits``, the
manifest section and exit verification.

May import: ``splitc.backends``, ``splitc.targets``, ``splitc.core`` and below; never another capability.
"""
