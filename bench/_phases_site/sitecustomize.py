"""Imported by Python at start-up when this folder is on `PYTHONPATH`: in a `moat serve`
process (or one of its workers), with `MOAT_BENCH_PHASES` set, install the phase
timestamps of `bench/_serve_phases.py` (see there). Any other process is left as it is."""

import os
import sys

_argv = sys.orig_argv
if os.environ.get("MOAT_BENCH_PHASES") and (
    "engine.serve.workers" in _argv or ("engine" in _argv and "serve" in _argv)
):
    from bench._serve_phases import ENV, install

    install(os.environ[ENV])
