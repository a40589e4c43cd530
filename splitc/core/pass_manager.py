"""Pass infrastructure: a pass declares what it needs and what it provides.

A :class:`Pass` takes a ``GraphModule`` and the compile context
(:class:`splitc.core.context.CompileContext`; not imported here, so that the context
may name the artifacts passes produce without a cycle) and returns a :class:`PassResult`. The :class:`PassManager` checks the declared
order before running anything (as TVM's ``PassInfo(required=...)`` and torch.fx's
PassManager constraints do), times and logs every pass from the outside, optionally
dumps the graph after each pass, and on failure says which pass failed and which
ran before it.

Example:
    >>> from splitc.core.pass_manager import PassManager
    >>> from splitc.core.passes.profile import ProfilePass
    >>> from splitc.core.passes.candidates import CandidatesPass
    >>> PassManager([CandidatesPass(), ProfilePass()]).validate()
    Traceback (most recent call last):
    ...
    splitc.core.pass_manager.PipelineOrderError: pass 'candidates' needs 'splitc.profile', which no earlier pass provides (order: candidates, profile)
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch.fx

from splitc.errors import SplitcError

__all__ = ["Pass", "PassResult", "PassManager", "PipelineOrderError", "PassFailure"]

log = logging.getLogger("splitc")


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph, whether it changed, a one-line summary."""

    graph_module: torch.fx.GraphModule
    modified: bool
    summary: str = ""


class Pass(abc.ABC):
    """One named compiler step. Subclasses set ``name``, ``requires`` and ``provides``."""

    name: ClassVar[str]
    #: capabilities (node.meta keys or context fields) that must exist before this pass
    requires: ClassVar[tuple[str, ...]] = ()
    #: capabilities this pass makes available to later passes
    provides: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def run(self, gm: torch.fx.GraphModule, ctx: Any) -> PassResult:
        """Run the pass. Must not rely on anything not listed in ``requires``."""


class PipelineOrderError(RuntimeError):
    """The pipeline lists a pass before the passes it depends on (a bug in the pipeline)."""


class PassFailure(RuntimeError):
    """A pass raised an unexpected exception (a bug); says where in the pipeline."""


class PassManager:
    """Runs passes in order after checking that the order satisfies their requirements.

    Args:
        passes: the passes, in execution order.
        dump_dir: if given, ``<dump_dir>/<NN>_<pass>.txt`` receives the graph after each pass.
    """

    def __init__(self, passes: Sequence[Pass], dump_dir: Path | None = None) -> None:
        self.passes = list(passes)
        self.dump_dir = Path(dump_dir) if dump_dir else None

    def validate(self, available: frozenset[str] = frozenset()) -> None:
        """Raise :class:`PipelineOrderError` if a pass needs what no earlier pass provides."""
        have = set(available)
        order = ", ".join(p.name for p in self.passes)
        for p in self.passes:
            for need in p.requires:
                if need not in have:
                    raise PipelineOrderError(
                        f"pass '{p.name}' needs '{need}', which no earlier pass provides (order: {order})")
            have.update(p.provides)

    def run(self, gm: torch.fx.GraphModule, ctx: Any) -> torch.fx.GraphModule:
        """Validate, then run every pass; returns the final graph module."""
        self.validate()
        done: list[str] = []
        for index, p in enumerate(self.passes):
            start = time.perf_counter()
            try:
                result = p.run(gm, ctx)
            except SplitcError:
                raise  # a user error: its message already says what to do
            except Exception as exc:
                ran = ", ".join(done) or "none"
                raise PassFailure(f"pass '{p.name}' failed (passes run before it: {ran}): "
                                  f"{type(exc).__name__}: {exc}") from exc
            elapsed = time.perf_counter() - start
            ctx.pass_timings[p.name] = elapsed
            log.info("[%s] %s (%.2fs)", p.name, result.summary or ("changed" if result.modified else "no change"),
                     elapsed)
            gm = result.graph_module
            done.append(p.name)
            if self.dump_dir is not None:
                self._dump(index, p.name, gm)
        return gm

    def _dump(self, index: int, name: str, gm: torch.fx.GraphModule) -> None:
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for node in gm.graph.nodes:
            keys = {k: v for k, v in node.meta.items() if k.startswith("splitc.") and k != "splitc.const_value"}
            rows.append(f"{node.op:<14} {node.name:<40} {node.format_node()}\n    {keys}")
        (self.dump_dir / f"{index:02d}_{name}.txt").write_text("\n".join(rows) + "\n")
