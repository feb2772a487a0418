"""Simulated hardware for demos and tests: a drive, a GNSS receiver on a pty, an ECU."""
