"""A torchvision model served by both servers, and live re-split: a bundle compiled with --bandwidth-range is
served with every variant's models; the client follows the measured link across the manifest's switch points
and every answer is exactly the in-process answer of the variant that ran it."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from splitc.backends.triton import MAX_BATCH, serving_repository
from splitc.runtime.client import SplitClient
from splitc.runtime.link import LinkMonitor
from splitc.runtime.runner import BundleRunner
from splitc.runtime.server import start_server
from splitc.runtime.triton_server import TritonServer

pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is the v2 client")
pytestmark = pytest.mark.slow  # compiles ResNet-18 three times (one bundle per bandwidth variant)


class _SetLink(LinkMonitor):
    """A link whose bandwidth the test sets (the real estimate is exercised by benchmarks/serving.py)."""

    value: float | None = None

    def bandwidth_bps(self) -> float | None:
        return self.value


def _references(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {i: BundleRunner(bundle / v["bundle"]) for i, v in enumerate(manifest["plan"]["variants"])}


def _images(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def servers(resnet_variants_bundle, triton_install):
    repo = Path(tempfile.mkdtemp(prefix="splitc-test-repo-"))
    names = serving_repository(resnet_variants_bundle, 1, repo, design="python", threads=1)
    triton = TritonServer(repo)
    triton.start()
    own = start_server(resnet_variants_bundle, "edge", port=0, threads=1)
    yield {"names": names, "triton": triton, "own": own}
    own.stop()
    triton.stop()


def test_the_bundle_has_variants_that_use_the_link_differently(resnet_variants_bundle, servers):
    manifest = json.loads((resnet_variants_bundle / "manifest.json").read_text())
    cuts = [[c["after"] for c in v["plan"]["cuts"]] for v in manifest["plan"]["variants"]]
    assert cuts == [["fc"], ["maxpool"], [None]], cuts  # all on the Pi, cut after maxpool, raw input
    assert [v["bundle"] for v in manifest["plan"]["variants"]] == ["variants/v0", ".", "variants/v2"]
    # the all-on-the-Pi variant needs no server; the other two are served side by side
    assert servers["names"] == ["splitc_tier1", "splitc_v2_tier1"]
    assert sorted(servers["own"].service.models) == ["splitc_tier1", "splitc_v2_tier1"]
    [record] = [a for a in manifest["artifacts"] if a["kind"] == "triton"]
    assert record["max_batch_size"] == MAX_BATCH  # ResNet-18's partition passed the batch-axis check


@pytest.mark.parametrize("server", ["triton-grpc", "triton-http", "own-http", "own-grpc"])
def test_torchvision_answers_equal_the_in_process_runner(resnet_variants_bundle, servers, server):
    url = {"triton-grpc": servers["triton"].grpc_url, "triton-http": servers["triton"].http_url,
           "own-http": servers["own"].url, "own-grpc": servers["own"].grpc_url}[server]
    images = _images(6)
    runner = BundleRunner(resnet_variants_bundle)
    with SplitClient(resnet_variants_bundle, remote=url, adapt=False) as client:
        assert client.remote_tier == 1 and len(client.variants) == 1
        results = client.infer_many(images, concurrency=3)  # concurrent: Triton batches them
    for image, result in zip(images, results):
        assert not isinstance(result, Exception), result
        assert result.answered_by == 1
        np.testing.assert_array_equal(result.outputs["output_0"], runner.run(image)["output_0"])


@pytest.mark.parametrize("server", ["triton-grpc", "own-http"])
def test_live_resplit_switches_at_the_switch_points_and_stays_exact(resnet_variants_bundle, servers, server):
    url = servers["triton"].grpc_url if server == "triton-grpc" else servers["own"].url
    references = _references(resnet_variants_bundle)
    link = _SetLink(probe_interval_s=1e9)
    images = _images(12)
    plan = [60e6, 60e6, 60e6, 500e6, 500e6, 500e6, 5e6, 5e6, 5e6, 60e6, 60e6, 60e6]
    with SplitClient(resnet_variants_bundle, remote=url, monitor=link) as client:
        assert [v.index for v in client.variants] == [0, 1, 2] and client.variants[client.current].index == 1
        seen = []
        for bandwidth, image in zip(plan, images):
            link.value = bandwidth
            result = client.infer(image)
            np.testing.assert_array_equal(result.outputs["output_0"], references[result.variant].run(image)["output_0"])
            seen.append((result.variant, result.answered_by))
        assert seen == [(1, 1)] * 3 + [(2, 1)] * 3 + [(0, 0)] * 3 + [(1, 1)] * 3
        assert [(s["from"], s["to"]) for s in client.switches] == [(1, 2), (2, 0), (0, 1)]


def test_a_device_only_variant_still_probes_the_link(resnet_variants_bundle, servers):
    references = _references(resnet_variants_bundle)
    link = _SetLink(probe_interval_s=0.5)
    images = _images(4)
    with SplitClient(resnet_variants_bundle, remote=servers["own"].url, monitor=link) as client:
        link.value = 5e6  # the link looks slow: everything on the Pi ...
        results = [client.infer(images[0])]  # ... but nothing has crossed it yet: this request measures it
        results.append(client.infer(images[1]))
        time.sleep(0.6)
        results.append(client.infer(images[2]))  # nothing crossed the link for a while: measure again
        results.append(client.infer(images[3]))
    assert [(r.variant, r.wire_bytes > 0) for r in results] == [(1, True), (0, False), (1, True), (0, False)]
    for image, result in zip(images, results):
        np.testing.assert_array_equal(result.outputs["output_0"], references[result.variant].run(image)["output_0"])
