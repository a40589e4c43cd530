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


@lru_cache(maxsize=1)
def _validator() -> Any:
    """One validator for the schema, its own validity checked once (``jsonschema.validate`` re-checks the
    schema against the meta-schema on every call: most of a manifest validation's time)."""
    import jsonschema

    schema = manifest_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``manifest`` breaks the schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(manifest))
    if error is not None:
        raise error
