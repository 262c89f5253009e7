"""Tests of the engine's top-level modules; each sub-package has its own folder."""
