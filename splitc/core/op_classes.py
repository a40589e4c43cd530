"""The operator classes shared by the profile pass and the target cost model.

The profile pass tags every node with one class (``node.meta["splitc.op_class"]``);
a target gives a compute efficiency (fraction of peak FLOP/s) per class and may
declare classes its backend fuses into the preceding kernel (no per-op overhead).
"""

from __future__ import annotations

__all__ = ["OP_CLASSES", "FREE_OP_CLASSES", "EFFICIENCY_REFINEMENTS"]

#: Every class a node can have. Keep in sync with target YAML ``efficiency`` keys.
OP_CLASSES: tuple[str, ...] = (
    "conv",           # convolutions (any dimensionality, grouped, transposed)
    "matmul",         # linear, matmul, bmm, einsum-like contractions
    "attention",      # fused attention (scaled_dot_product_attention, nn.MultiheadAttention)
    "norm",           # batch/layer/group/instance norm
    "pool",           # max/avg/adaptive pooling
    "elementwise",    # activations, add, mul, ... (memory bound)
    "reduction",      # mean, sum, softmax, ...
    "data_movement",  # cat, permute+contiguous, pad, roll: copies bytes, no FLOPs
    "view",           # reshape/flatten/getitem/size: free (no kernel, no bytes)
    "other",          # anything not recognised (costed as elementwise)
)

#: Classes that never launch a kernel of their own in any backend.
FREE_OP_CLASSES: frozenset[str] = frozenset({"view"})

#: Optional efficiency keys that refine a class for a kind of node; a target without one uses
#: the class's efficiency. Depthwise convolutions (groups == input channels) reach a fraction
#: of dense convolutions' FLOP rate on CPUs (measured by ``splitc profile``: ~1/5 here).
EFFICIENCY_REFINEMENTS: dict[str, str] = {"conv_depthwise": "conv"}
