"""splitc: an ahead-of-time compiler for split DNN inference across device, edge and cloud.

The public entry points are the ``splitc`` command line (``splitc.compiler.cli``)
and :func:`splitc.compiler.pipeline.compile_model`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
