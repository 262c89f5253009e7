"""The test suite; its folders mirror the source tree (engine/, nodes/, tui/, bench/)."""
