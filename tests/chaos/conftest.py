"""Fixtures of the chaos tests: real nodes (`node_factory`) on a real mosquitto."""

from tests.support.nodes import node_factory

__all__ = ["node_factory"]
