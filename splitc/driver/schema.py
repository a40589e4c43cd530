"""The manifest's JSON Schema, readable without the compiler (no torch): ``splitc run`` and ``splitc serve``
check a bundle with it on a device that has only the runtime installed (``pip install 'splitc[runtime]'``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["manifest_schema", "validate_manifest"]


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json (shipped as ``splitc/driver/manifest.schema.json``)."""
    text = resources.files("splitc.driver").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``manifest`` breaks the schema."""
    import jsonschema

    jsonschema.validate(manifest, manifest_schema())
