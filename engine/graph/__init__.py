"""Graph files: parsing with positions, the spec, checks, loading and the compiled form."""
