"""Shared test support: real brokers, free ports, bounded waits."""
