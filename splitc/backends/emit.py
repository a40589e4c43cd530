"""Backend artifacts next to the ONNX partitions: Triton repositories, TensorRT recipes, FaaS handlers.

Which artifacts a tier gets is decided by the tier's target (``--emit auto``, the default),
because that is what the deployment of that tier needs:

==================  ==========================================================
``triton``          server tiers (kind ``edge`` or ``cloud-vm``) with a partition
``tensorrt``        tiers whose backend is ``tensorrt`` (build recipe; engine if TensorRT imports)
``faas``            tiers of kind ``faas`` (Lambda-style handler)
==================  ==========================================================

``--emit none`` writes none; ``--emit triton,faas`` restricts to those kinds (still only on
the tiers they apply to). The list of written files goes into the manifest's ``artifacts``.

Example:
    >>> from splitc.backends.emit import emitters_for
    >>> emitters_for({"kind": "cloud-vm", "backend": "tensorrt"}, ("auto",))
    ['triton', 'tensorrt']
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from splitc.errors import SplitcError

__all__ = ["EMIT_KINDS", "emitters_for", "emit_backend_artifacts", "parse_emit"]

log = logging.getLogger("splitc")

EMIT_KINDS = ("triton", "tensorrt", "faas")


def parse_emit(values: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Normalise ``--emit`` values (comma-separated allowed) and reject unknown kinds."""
    items = [v.strip().lower() for value in ([values] if isinstance(values, str) else values)
             for v in value.split(",") if v.strip()]
    items = items or ["auto"]
    unknown = sorted(set(items) - set(EMIT_KINDS) - {"auto", "none"})
    if unknown:
        raise SplitcError(f"--emit {','.join(unknown)} is not known", f"valid: auto, none, {', '.join(EMIT_KINDS)}")
    if ("auto" in items or "none" in items) and len(items) > 1:
        raise SplitcError(f"--emit {','.join(items)}: 'auto' and 'none' cannot be combined with other kinds")
    return tuple(items)


def emitters_for(target: dict[str, Any], emit: tuple[str, ...]) -> list[str]:
    """The artifact kinds that apply to a tier's ``target`` under the ``--emit`` choice."""
    from splitc.backends.triton import SERVER_KINDS

    applies = []
    if target.get("kind") in SERVER_KINDS:
        applies.append("triton")
    if target.get("backend") == "tensorrt":
        applies.append("tensorrt")
    if target.get("kind") == "faas":
        applies.append("faas")
    if "none" in emit:
        return []
    return applies if "auto" in emit else [k for k in applies if k in emit]


def _emitter(kind: str) -> Callable[[Path, dict, dict], dict | None]:
    if kind == "triton":
        from splitc.backends.triton import emit_triton
        return emit_triton
    if kind == "tensorrt":
        from splitc.backends.tensorrt import emit_tensorrt
        return emit_tensorrt
    from splitc.backends.faas import emit_faas
    return emit_faas


def emit_backend_artifacts(stage: Path, manifest: dict[str, Any], options: Any) -> list[dict[str, Any]]:
    """Write every applicable artifact into the bundle staging folder ``stage``.

    Args:
        stage: the bundle folder being written (partitions and manifest already there).
        manifest: the manifest (read only).
        options: the compile options (``options.emit``; ``("auto",)`` when absent).

    Returns:
        One record per tier and kind: ``{"kind", "tier_index", "path", "files", "notes", ...}``.
    """
    emit = parse_emit(getattr(options, "emit", ("auto",)))
    records = []
    for tier in manifest["tiers"]:
        for kind in emitters_for(tier["target"], emit):
            start = time.perf_counter()
            record = _emitter(kind)(Path(stage), manifest, tier)
            if record is None:
                continue
            records.append(record)
            log.info("[emit] %s for tier %s: %d file(s) in %s (%.2fs)", kind, tier["name"], len(record["files"]),
                     record["path"], time.perf_counter() - start)
    return records
