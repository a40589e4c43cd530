"""Write a bundle atomically: build it in a hidden sibling folder, move it into place at the end.

A failed compile (bad input, failed verification, a bug) removes the staging
folder, so nothing half-written ever sits at the output path looking like a bundle.
An existing output folder is replaced only if it is itself a splitc bundle (has a
manifest.json) or is empty; anything else is refused. The bundle root gets the usual
permissions (``0o777`` minus the umask, like ``mkdir``), not the staging folder's private
``0o700``, so the service account that serves it can read it.

``write_bundle_readme`` writes the bundle's own README.md: per tier, what to install and the
command that runs it, so a bundle can be deployed from the folder alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from splitc.errors import SplitcError

__all__ = ["check_output_dir", "staging_dir", "write_bundle_readme"]

log = logging.getLogger("splitc")


def check_output_dir(out: Path) -> None:
    """Fail early (before any work) if ``out`` cannot receive a bundle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SplitcError(f"output path '{out}' exists and is a file", "choose a folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise SplitcError(f"output folder '{out}' is not empty and is not a splitc bundle",
                          "choose another -o folder or empty this one")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SplitcError(f"cannot create the output folder's parent '{parent}': {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SplitcError(f"output folder '{out}' is not writable (no write permission on '{parent}')",
                          "choose a writable -o folder")


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh folder next to ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out).resolve()
    check_output_dir(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.splitc-", dir=out.parent))
    except OSError as exc:
        raise SplitcError(f"cannot write into '{out.parent}': {exc.strerror}", "choose a writable -o folder") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp made it private (0o700); a bundle is meant to be shared
    _replace(stage, out)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def _replace(stage: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.splitc-old-{os.getpid()}")
        os.replace(out, old)
        log.info("replacing the existing bundle at %s", out)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the bundle's own README: deploying from the folder alone

RUNTIME_INSTALL = "pip install 'splitc[runtime]'"  # ONNX Runtime + numpy + the splitc command line, no torch


def write_bundle_readme(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``README.md`` into a bundle: per tier, what it runs, what to install and the command that runs it.

    Args:
        folder: the bundle folder (the staging folder during a compile).
        manifest: the bundle's manifest (tiers, partitions, transfers, artifacts, exits).

    Returns:
        The path written.
    """
    path = Path(folder) / "README.md"
    path.write_text(bundle_readme(manifest), encoding="utf-8")
    return path


def bundle_readme(manifest: dict[str, Any]) -> str:
    """The text of a bundle's README.md (see :func:`write_bundle_readme`)."""
    model = manifest["model"]
    source = model["source"].get("path") or model["source"].get("spec")
    tiers = manifest["tiers"]
    working = [t for t in tiers if t["partition"] is not None]
    inputs = ", ".join(f"`{i['name']}` {i['shape']} {i['dtype']}" for i in model["inputs"])
    lines = [
        f"# splitc bundle: {source}",
        "",
        # no date here (it is generator.created in manifest.json): two identical compiles write identical files
        f"Compiled by splitc {manifest['generator']['version']} for the chain "
        + " -> ".join(f"`{t['name']}`" for t in tiers) + f"; predicted latency "
        f"{manifest['plan']['predicted']['latency_s'] * 1e3:.2f} ms per request. Input: {inputs}. "
        "`manifest.json` (schema: `manifest.schema.json`) says exactly what each tier runs and what crosses each "
        "link; `report.md` says why this plan was chosen.",
        "",
        "## Install",
        "",
        f"Every tier that runs a partition needs ONNX Runtime only: `{RUNTIME_INSTALL}` installs ONNX Runtime, "
        "numpy and the `splitc` command (`splitc run`, `splitc serve`) -- no torch. Copy `manifest.json` and the "
        "folder of the tier to each machine (or the whole bundle). The partitions are plain ONNX (static shapes): "
        "any ONNX Runtime or TensorRT deployment can run them by following the manifest "
        "(`splitc.runtime.runner.BundleRunner` is the short reference implementation).",
        "",
        "## Tier by tier",
    ]
    transfers = {t["from_tier"]: t for t in manifest["transfers"]}
    incoming = {t["to_tier"]: t for t in manifest["transfers"]}
    first_remote = next((t["index"] for t in working if t["index"] > 0), None)
    for tier in tiers:
        lines += ["", f"### Tier {tier['index']}: `{tier['name']}` ({tier['target']['kind']}, "
                      f"{tier['target']['backend']})", ""]
        if tier["partition"] is None:
            lines.append("Runs nothing in this plan (it relays, or no request reaches it): nothing to deploy here.")
            continue
        lines += _tier_lines(manifest, tier, incoming.get(tier["index"]), transfers.get(tier["index"]), first_remote)
    lines += ["", "## Check it", "",
              "`splitc run . --input sample.npy` runs every tier in one process (a `.npy` of the input's shape and "
              "dtype). With the compiler installed (`pip install 'splitc[compiler]'`), `splitc verify .` reloads the "
              "original model and compares.", ""]
    return "\n".join(lines)


def _tier_lines(manifest: dict[str, Any], tier: dict[str, Any], received: dict[str, Any] | None,
                sent: dict[str, Any] | None, first_remote: int | None) -> list[str]:
    part = manifest["partitions"][tier["partition"]]
    out = [f"Runs `{part['file']}` (nodes `{part['nodes']['first']}` .. `{part['nodes']['last']}`, "
           f"{part['nodes']['count']} nodes)."]
    if received is not None:
        out.append(f"Receives on link {received['link']}: {_tensors(received)}.")
    else:
        out.append("Receives the model input: " + ", ".join(f"`{i['name']}` {i['shape']} {i['dtype']}"
                                                            for i in part["inputs"]) + ".")
    if sent is not None:
        out.append(f"Sends on link {sent['link']} to tier {sent['to_tier']}: {_tensors(sent)}; the encoding is done "
                   "inside the ONNX graph, so its outputs are the bytes to send.")
    exits = [e for e in manifest.get("exits", []) if e["partition"] == part["index"]]
    for e in exits:
        out.append(f"Early exit at `{e['node']}`: when output `{e['outputs']['confidence']}` >= {e['threshold']:.4f}, "
                   f"`{e['outputs']['logits']}` is the answer and nothing is sent (`splitc run` does this).")
    out += ["", "```bash", RUNTIME_INSTALL]
    if tier["index"] == 0:
        if first_remote is None:
            out.append("splitc run . --input sample.npy                 # the whole model runs here")
        else:
            out.append(f"splitc run . --input sample.npy --remote http://TIER{first_remote}-HOST:8000   "
                       "# this tier here, the rest at the next tier's server")
    else:
        out.append(f"splitc serve . --tier {tier['name']} --host 0.0.0.0 --port 8000   "
                   "# later tiers run here too, unless --next URL")
    out.append("```")
    for artifact in manifest.get("artifacts", []):
        if artifact.get("tier_index") != tier["index"]:
            continue
        what = {"triton": "a Triton model repository (the client decodes the wire encoding)",
                "tensorrt": "a TensorRT recipe (trtexec command and a Python builder) for this partition",
                "faas": "a serverless handler (the same service code as `splitc serve`)"}.get(artifact["kind"],
                                                                                            artifact["kind"])
        readme = next((f for f in artifact.get("files", []) if f.endswith("README.md")), None)
        out.append(f"Also: `{artifact['path']}/`: {what}" + (f"; see `{readme}`." if readme else "."))
    return out


def _tensors(transfer: dict[str, Any]) -> str:
    return ", ".join(f"`{t['name']}` {t['shape']} {t['dtype']} ({t['encoding']['kind']})" for t in transfer["tensors"]) \
        + f", {transfer['bytes']:,} bytes per request"
