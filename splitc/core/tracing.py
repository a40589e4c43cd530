"""What tracing needs besides the tracers: torch kept quiet, failures explained, export's bookkeeping removed.

* :class:`quiet_torch` keeps torch's own output off the user's terminal (a failed
  ``torch.export`` prints the whole partial graph to stderr, ``torch.export.load`` logs a
  deserialization traceback, tracers warn); what it captured is logged at DEBUG (``-v``).
* :func:`describe_trace_failure` names the user's file and line that stopped a tracer (the
  chain of model-code frames, torchvision's own files included), and :func:`trace_hint` gives
  the hint that fits why: a missing ``--input-dtype int64``, a wrong shape, a data-dependent
  branch (a detector's post-processing), or else the generic control-flow advice.
* :class:`quiet_native_stderr` does the same for native libraries writing to file descriptor 2
  (onnxsim's optimizer reports every constant it cannot fold there).
* :func:`strip_export_bookkeeping` removes ``torch.export``'s input guards and metadata asserts,
  which would otherwise be offered as cut positions.
* :func:`optional_defaults` / :func:`drop_specialized_placeholders` let ``symbolic_trace``
  specialise optional ``forward`` arguments that are not inputs (timm's ``attn_mask=None``).

Example:
    >>> import torch
    >>> with quiet_torch():
    ...     gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
    >>> strip_export_bookkeeping(gm)
    0
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import operator
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn

__all__ = ["quiet_torch", "quiet_native_stderr", "describe_trace_failure", "trace_hint", "strip_export_bookkeeping", "copy_graph_module",
           "optional_defaults", "drop_specialized_placeholders", "first_line", "is_library_file"]

log = logging.getLogger("splitc")


class quiet_torch:  # noqa: N801 - a context manager, named like contextlib's
    """Keep torch's own output off the terminal; log what was captured at DEBUG.

    Redirects stderr, disables the ``torch*`` loggers and ignores warnings for the duration,
    unless the ``splitc`` logger is at DEBUG (``-v``): then everything passes through.
    """

    def __enter__(self) -> "quiet_torch":
        self._verbose = log.isEnabledFor(logging.DEBUG)
        self._buffer = io.StringIO()
        self._stack = contextlib.ExitStack()
        self._loggers: list[tuple[logging.Logger, bool]] = []
        if not self._verbose:
            self._stack.enter_context(contextlib.redirect_stderr(self._buffer))
            self._stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch"))]
            self._loggers = [(lg, lg.disabled) for lg in map(logging.getLogger, names)]
            for lg, _ in self._loggers:
                lg.disabled = True
        return self

    def __exit__(self, *exc: object) -> bool:
        self._stack.close()
        for lg, disabled in self._loggers:
            lg.disabled = disabled
        text = self._buffer.getvalue()
        if text.strip():
            log.debug("torch's output while tracing (%d lines):\n%s", text.count("\n"), text)
        return False


class quiet_native_stderr:  # noqa: N801 - a context manager
    """Send what native code writes to file descriptor 2 to a temporary file; log it at DEBUG (``-v``).

    Python-level redirection does not reach C++ (onnxsim prints ``WARNING: failed to run "Concat"
    op ...`` for every constant it cannot fold). Nothing is redirected at DEBUG level.
    """

    def __enter__(self) -> "quiet_native_stderr":
        import tempfile

        self._saved: int | None = None
        if log.isEnabledFor(logging.DEBUG):
            return self
        try:
            sys_stderr = sys.stderr
            sys_stderr.flush()
            self._file = tempfile.TemporaryFile(mode="w+b")
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. captured by a test runner)
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> bool:
        if self._saved is None:
            return False
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.close()
        if text.strip():
            log.debug("native output (%d lines):\n%s", text.count("\n"), text)
        return False


# --------------------------------------------------------------------------- failures


_LIBRARY_DIRS = tuple(Path(m.__file__).resolve().parent for m in (torch, importlib.import_module("splitc")))


def is_library_file(filename: str) -> bool:
    """torch's and splitc's own frames, and generated code (``<eval_with_key>``).

    A path test, not a string prefix: ``.../site-packages/torch`` is a string prefix of
    ``.../site-packages/torchvision``, whose detectors are model code the user must see.
    """
    if filename.startswith("<"):
        return True
    path = Path(filename).resolve()
    return any(path.is_relative_to(d) for d in _LIBRARY_DIRS)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:limit]


def describe_trace_failure(exc: BaseException) -> str:
    """First line of the error (long symbolic expressions shortened) and where in the model's code it stopped.

    Returns:
        e.g. ``"Proxy object cannot be iterated at zoo.py:124 > ssd.py:345 `for img in images:`"``:
        up to four model-code frames (outside torch and splitc), the deepest with its source line.
    """
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library_file(f.filename)]
    where = ""
    if frames:
        chain = " > ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-4:])
        where = f" at {chain} `{(frames[-1].line or '').strip()}`"
    message = first_line(exc)
    if len(message) > 160:  # "Could not guard on data-dependent expression 4*Min(300, u0) + 4*Min(...) + ..."
        message = message[:150].rsplit(" ", 1)[0] + " ..."
    return f"{message}{where}"


_DTYPE_WORDS = ("expected tensor for argument", "scalar type long", "expected scalar type long",
                "indices must be", "tensors used as indices must be long")
_SHAPE_WORDS = ("size mismatch", "shapes cannot be multiplied", "doesn't match model", "does not match",
                "expected input", "must match the size", "invalid for input of size", "expected size",
                "but got input of size", "channels", "input image size", "input height", "input width")
_DATA_DEPENDENT_WORDS = ("proxy object cannot be iterated", "control flow", "data-dependent", "guardondatadependent",
                         "could not guard", "could not extract specialized", "symbolically traced variables")


def trace_hint(errors: Sequence[BaseException], specs: Sequence[Any]) -> str:
    """A hint that fits why tracing failed.

    Args:
        errors: the tracers' exceptions.
        specs: the inputs tried (objects with ``name``, ``shape``, ``dtype``), quoted in the hint.
    """
    low = " ".join(str(e) for e in errors).lower()
    given = " ".join(f"--input {s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in specs)
    if any(w in low for w in _DTYPE_WORDS) or ("embedding" in low and "long" in low):
        return f"the model reads integer ids: pass --input-dtype int64 (inputs now: {given})"
    if "index out of range" in low or "out of bounds" in low:
        return f"an input holds indices out of range (token ids >= the vocabulary?): check shapes and dtypes ({given})"
    if any(w in low for w in _SHAPE_WORDS):
        return f"the input shape is wrong for this model: pass its real shape with --input-shape (inputs now: {given})"
    if any(w in low for w in _DATA_DEPENDENT_WORDS):
        return ("forward() branches on tensor values: use torch.where / torch.cond there, or move that code out of "
                "forward(); for a detector's post-processing, make forward() return the raw head outputs "
                "(torchvision detectors given directly are split automatically)")
    return ("make forward() traceable: remove data-dependent Python control flow (use torch.where / torch.cond) "
            "or mark the construct as a leaf module")


# --------------------------------------------------------------------------- graph clean-up


#: torch.export's bookkeeping: metadata and shape asserts. With static shapes they check nothing the bundle
#: needs, and left in they are "compute" nodes a plan could cut after.
_BOOKKEEPING = tuple(getattr(torch.ops.aten, name).default for name in (
    "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "sym_constrain_range")
    if hasattr(torch.ops.aten, name))


def strip_export_bookkeeping(gm: torch.fx.GraphModule) -> int:
    """Erase torch.export's ``_guards_fn`` call and unused assert nodes from ``gm``.

    Returns:
        How many nodes were erased.
    """
    erased = 0
    for node in reversed(list(gm.graph.nodes)):
        if node.users:
            continue
        guard = node.op == "call_module" and str(node.target).startswith("_guards_fn")
        if guard or (node.op == "call_function" and node.target in _BOOKKEEPING):
            gm.graph.erase_node(node)
            erased += 1
    if erased:
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return erased


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph (node meta kept, plain positional codegen).

    Passes edit the copy while ``gm`` stays the untouched reference for verification.
    """
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    copy = torch.fx.GraphModule(gm, graph)
    copy.meta.update(gm.meta)
    return copy


def optional_defaults(module: nn.Module, input_names: Sequence[str]) -> dict[str, Any]:
    """``{name: default}`` of ``forward``'s optional parameters that are not inputs.

    ``symbolic_trace`` makes every parameter a placeholder unless it is given in ``concrete_args``
    (timm's ``forward(x, attn_mask=None, is_causal=False)`` would get three inputs).
    """
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not p.empty and p.name not in input_names
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def drop_specialized_placeholders(gm: torch.fx.GraphModule, names: set[str]) -> None:
    """Remove the placeholders fx made for ``concrete_args`` and the asserts that check them."""
    checks = {torch.fx._symbolic_trace._assert_is_none, torch._assert}
    for node in [n for n in gm.graph.nodes if n.op == "placeholder"
                 and (n.target in names or re.sub(r"_\d+$", "", n.target) in names)]:  # fx names it attn_mask_1
        for user in list(node.users):
            if user.op == "call_function" and user.target in checks:
                gm.graph.erase_node(user)
            elif user.op == "call_function" and user.target is operator.eq and \
                    all(u.target is torch._assert for u in user.users):
                for check in list(user.users):
                    gm.graph.erase_node(check)
                gm.graph.erase_node(user)
        if not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
