"""Task handlers: the built-in types and user handlers (python functions, commands)."""
