"""Data sources: one module per kind of hardware or feed."""
