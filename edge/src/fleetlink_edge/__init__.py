"""fleetlink edge agent."""
