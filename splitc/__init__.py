"""splitc: an ahead-of-time compiler for split DNN inference across device, edge and cloud.

The public entry points are the ``splitc`` command line (``splitc.driver.cli``) and
:func:`splitc.compile_model` (``splitc.driver.pipeline.compile_model``, imported on first use so
that ``import splitc.runtime`` on a device does not load torch).

Layout (imports point down only; ``tests/test_layers.py`` keeps it so):
``driver`` > ``exits`` | ``compression`` | ``privacy`` | ``planning`` > ``backends`` > ``targets``
> ``core`` > ``runtime`` > ``units`` > ``errors``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compile_model"]


def __getattr__(name: str) -> Any:
    if name == "compile_model":
        from splitc.driver.pipeline import compile_model

        return compile_model
    raise AttributeError(f"module 'splitc' has no attribute {name!r}")
