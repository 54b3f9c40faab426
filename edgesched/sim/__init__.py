"""Discrete-event simulator running the same core decision code as the daemon."""
