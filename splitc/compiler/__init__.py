"""Loading, the pipeline, the compile context, plan and manifest types, CLI."""
