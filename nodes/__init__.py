"""moat built-in node plugins."""
