from __future__ import annotations

import pytest

from tests.serving_bundles import three_tier_bundle


@pytest.fixture(scope="session")
def bundle3(tmp_path_factory):
    return three_tier_bundle(tmp_path_factory)
