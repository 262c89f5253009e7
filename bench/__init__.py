"""moat benchmarks and workload generator (not part of the test suite)."""
