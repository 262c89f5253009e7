"""The moat terminal UI."""
