"""The hand-written method notes appended to the bench section of RESULTS.md."""

from __future__ import annotations

__all__ = ["NOTES"]

NOTES = """
### How to read it

- **Workload** (`bench/workload.py`, `bench/tasks.py`; not tuned to any graph): fresh
  requests are questions about a note (20 %), arithmetic (10 %) and percentages (4 %), unit
  conversions (7 %), ticket classification (11 %), ticket fields as JSON (9 %), the output
  of a Python snippet (10 %), classification with personal data (8 %), harmful requests
  (8 %, labelled category), dual-use (8 %: harm-adjacent wording, then a checkable
  question) and ambiguous ones (5 %, 35 % of them harmful); difficulty drawn per kind from
  a Beta distribution; five tenants of unequal size. 10 % of requests are exact repeats and
  15 % rewordings of earlier ones. `--mix kind=share,...` changes the shares.
- **Quality** is judged by `bench/checkers.py` from the answer's text alone, so real
  endpoints are scored the same way: a harmful request scores 1 when refused (the
  output's `decision`, the policy's refusal text, or refusal wording), any other when it
  is answered, not refused, and gives the expected value (the number on its `Answer:` line
  within 1 %, the label or name, or every field of the ticket's JSON). `benign acc`: that
  score on benign requests; `refusal recall`: share of harmful requests refused; `false
  refusals`: share of benign requests refused; `valid`: share of `validate` runs passed.
- **Intervals**: every configuration runs on the same requests of each seed; the
  differences against the baseline are resampled request by request, within each seed
  (paired bootstrap, 400 resamples, percentile 95 % intervals). A goal is met only when
  its whole interval is on the right side; `unresolved` when the interval straddles it.
- **Baseline**: the large model alone, its risk review and answer started together (the
  strongest single-large-model design: no cache, no routing, no loop).
- **Oracle** (counterfactual, the frontier): the three single-model runs (`single-small`,
  `single-medium`, `single-large`: one model for review and answer, behind the flagship's
  cache) and, per request, the cheapest one that actually got it right, at that run's cost
  and latency. No router choosing among these models can be cheaper at its quality.
- **Models** (`engine/models/sim.py`): the `sim` profiles are modelled on gpt-4.1-nano,
  gpt-4.1-mini and gpt-4.1, billed at their list prices (`engine/models/prices.py`, dated),
  with their measured speeds and time to first token, prefill growing with the prompt,
  tails shared within a request and across calls in a slow provider minute, and the
  default fault profile (`bench/_faults.py`): 2 % 429 with Retry-After, 0.5 % 5xx, 0.2 %
  hangs cut by a 10 s call timeout, at most 128 calls in flight per model. Their chance of
  being right follows `engine/models/_sim_model.py`; when right, a simulated model gives
  the answer worked out from the request's text, else a plausible wrong one.
- **Cost-quality curves**: the flagship sweeps `converge.early_min_score`, the cascade
  `speculate.accept_threshold`, the baseline `risk.refuse_at`, each on the first half of
  the first seed's requests (the curve's `policy` point is the shipped value on that
  subset; the table's point pools every seed).
"""
