"""Fixtures of the ops tests: `node_factory` (real `edgesched run` subprocesses)."""

from tests.support.nodes import node_factory

__all__ = ["node_factory"]
