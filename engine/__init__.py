"""moat runtime."""
