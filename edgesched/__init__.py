"""edgesched: per-task placement of edge work on this node, a neighbour or the cloud."""

__version__ = "0.1.0"
