"""fleetlink cloud service."""
