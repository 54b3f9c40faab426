"""Static files of the node's built-in status page (served by adapters/http.py)."""
