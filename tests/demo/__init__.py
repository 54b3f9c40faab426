"""Tests of `edgesched demo`: its parts, and whole runs against real brokers and nodes."""
