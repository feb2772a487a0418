"""fleetlink wire protocol v1 and vehicle-data tables: pure code, no I/O."""
