"""Fakes, fixtures and graph builders shared by tests across the suite."""
