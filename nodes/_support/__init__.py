"""Helper libraries of the built-in nodes: not node types, not public API."""
