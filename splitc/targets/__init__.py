"""Targets are data: the catalog, the cost model, and exporters per backend."""
