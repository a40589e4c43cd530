"""Run a bundle in one process with ONNX Runtime, exactly as its manifest says.

Semantics (the bundle contract): the request starts at tier 0 with the model
inputs. Each tier that has a partition runs it on the values it holds; then, if
the manifest lists a transfer on the tier's outgoing link, every tensor of that
transfer is encoded as the manifest says, "sent" (as bytes), decoded, and the next
tier holds only what was sent. A tier without a partition relays what it received.
The model outputs are read, by tensor name, from what the last tier holds.

Example:
    >>> from splitc.runtime_stubs.runner import BundleRunner
    >>> runner = BundleRunner("bundle/")                      # doctest: +SKIP
    >>> outputs = runner.run({"x": image})                     # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from splitc.runtime_stubs.encoding import decode, encode

__all__ = ["BundleRunner", "load_manifest"]


def load_manifest(bundle: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a bundle folder."""
    with open(Path(bundle) / "manifest.json", encoding="utf-8") as handle:
        return json.load(handle)


class BundleRunner:
    """Executes every tier of a bundle in-process.

    Args:
        bundle: the bundle folder.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads per session (0 = ONNX Runtime's default).
    """

    def __init__(self, bundle: str | Path, providers: list[str] | None = None, threads: int = 0) -> None:
        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.sessions = {
            p["index"]: ort.InferenceSession(str(self.bundle / p["file"]), options,
                                             providers=providers or ["CPUExecutionProvider"])
            for p in self.manifest["partitions"]
        }
        self._partition_of_tier = {p["tier_index"]: p for p in self.manifest["partitions"]}
        self._transfer_on_link = {t["link"]: t for t in self.manifest["transfers"]}
        self.wire_bytes: list[int] = []  # bytes sent per link on the last run
        self.received: dict[str, np.ndarray] = {}  # every tensor decoded from a link on the last run

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request; returns the model outputs by manifest output name."""
        held = {spec["name"]: np.asarray(inputs[spec["name"]]) for spec in self.manifest["model"]["inputs"]}
        self.wire_bytes, self.received = [], {}
        for tier in self.manifest["tiers"]:
            part = self._partition_of_tier.get(tier["index"])
            if part is not None:
                held.update(self.run_partition(part["index"], held))
            transfer = self._transfer_on_link.get(tier["index"])
            if transfer is not None:
                held = self._send(transfer, held)
        return {o["name"]: held[o["tensor"]] for o in self.manifest["model"]["outputs"]}

    def run_partition(self, index: int, held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run partition ``index`` on the named values it needs; returns its named outputs."""
        part = self.manifest["partitions"][index]
        feeds = {spec["name"]: held[spec["name"]] for spec in part["inputs"]}
        results = self.sessions[index].run([o["name"] for o in part["outputs"]], feeds)
        return dict(zip((o["name"] for o in part["outputs"]), results))

    def _send(self, transfer: dict[str, Any], held: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        received, sent = {}, 0
        for spec in transfer["tensors"]:
            payload = encode(held[spec["name"]], spec)
            sent += len(payload)
            received[spec["name"]] = decode(payload, spec)
        self.wire_bytes.append(sent)
        self.received.update(received)
        return received
