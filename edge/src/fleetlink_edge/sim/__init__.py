"""Simulated hardware for demos and tests: a drive, a GNSS receiver on a pty, an ECU, a driver
who answers job offers, and the failures a demo injects (a dark uplink, a stored DTC)."""
