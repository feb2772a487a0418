"""fleetlink benchmarks (not shipped; run with ``uv run python -m bench``)."""
