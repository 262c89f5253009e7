"""Explaining runs from the store: the request report, run stats and their renderings."""
