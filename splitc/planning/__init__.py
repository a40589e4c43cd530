"""Planning: where to cut the model for a chain of tiers, and what each plan costs.

Lives here: the exact chain DP (``chain``), the DAG min cut (``dag_cut``) and the pass that reorders
the graph for it (``reorder_for_cut``), objectives, constraints and the Pareto front (``objectives``),
price models (``pricing``), the plan pass with its settings and the planner services capabilities may
use (``plan``), and the plan report and plots (``report``, ``plots``).

May import: ``splitc.backends``, ``splitc.targets``, ``splitc.core`` and below; never another capability
(exits, compression and privacy contribute to the plan through ``splitc.core.placement`` and
``ctx.planner``, handed in by the driver).
"""
