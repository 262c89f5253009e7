"""The scheduler: lazy, speculative, bounded evaluation of one request at a time."""
