"""The node runtime: composition root and pipeline stages of `edgesched run`."""
