"""The hand-written method notes and findings appended to the bench section of RESULTS.md."""

from __future__ import annotations

__all__ = ["NOTES"]

NOTES = """
### How to read it

- **Workload** (`bench/workload.py`, not tuned to any graph): fresh requests are factual
  26 %, support 14 %, multi-step reasoning 14 %, code 12 %, ticket extraction 9 %, with
  personal data 8 %, harmful 8 %, dual-use 5 % (benign, harm-adjacent wording), ambiguous
  4 % (35 % of them harmful); difficulty drawn per kind from a Beta distribution; five
  tenants of unequal size. 10 % of requests are exact repeats and 15 % paraphrases of
  earlier ones (heavy-tailed popularity, 85 % from the same tenant).
- **Quality** (points out of 100): a harmful-labelled request scores 1 when refused; any
  other request scores 1 when it is answered (not refused, status ok/partial) and the
  answer contains its label `answer` token. Refused = output `decision` is `refuse` or the
  answer is the policy's refusal text. `answer acc` is that score on benign requests,
  `refusal recall` the share of harmful requests refused, `false refusals` the share of
  benign requests refused.
- **Refuse path** (`refuse p50 ms`): median latency of refusals made before any
  deliberation (output `cycles` absent or 0), i.e. by the up-front risk review.
- **cache hits**: share of requests answered from the semantic cache. **valid**: share of
  requests whose `validate` node ran that passed (`-`: no validation in the graph).
  **spec**: speculative node runs used/discarded/cancelled, and the cost of the discarded
  and cancelled speculative calls per case.
- **oracle-router** (`bench/oracle-router.yaml` + `bench/_oracle.py`): reads the hidden
  `difficulty` label (never `harmful`) and sends the risk review and the answer each to
  the cheapest model whose documented sim success chance reaches 0.9; same redaction,
  thresholds, refusal text and validation as the flagship; no cache, loop or speculation.
  For the risk review no small or medium model reaches 0.9, so it lands on `large`.

### Findings

- **What changed after the first run.** The first 5,000-request run (same workload) had the
  flagship at 0.386x the baseline's cost, 1.25x its p95 and 30 points below its quality:
  drafts were judged on `small` and revised on `large` (~3.3 s a call, 70 % of the cost),
  and a critic-score floor of 0.8 for early convergence rejected about a quarter of clean
  drafts. Judging and revising drafts on `medium` and converging early from 0.75 gave the
  figures above (cost 0.25x, p95 0.78x, quality -18). Its no-early-convergence ablation
  also set a value above the converge node's bound; `moat policy apply` refuses such a
  file, but the benchmark pinned policies without validating them, so every looping
  request failed. It now uses 1.0, and the test suite validates every shipped policy.
- **Quality is lost to false refusals.** The sim's small model flags a benign request as
  harmful with probability `(1 - accuracy) * 0.4`, about 18 % per call; the medium one
  about half that. The flagship's risk review runs on `small`, and a `refuse` from it or
  from any critique in the loop ends the request: 26 % of benign requests are refused
  (baseline 2.8 %, whose single review runs on `large`), while refusal recall is higher
  than the baseline's (0.92 vs 0.81). Measured on 1,000 requests, moving the risk review
  to `medium` lifts quality by about 8 points but triples the refuse path's latency
  (~780 ms), so the graph keeps the cheap review and the gap is reported, not hidden.
  Letting a benign-looking request override a critique's refusal would close more of it,
  but that weakens the governance the graph exists for, so it is not done.
- **p95 is set by requests that need a second or third cycle.** Each revision and
  re-critique on `medium` adds ~1.5-2 s; the few requests that reach cycle 3 set the p95.
  The cascade graph (no critique loop) reaches 0.68x the baseline's p95, at 80 points.
- **Every mechanism earns its place in this workload:** without early convergence cost
  rises 56 % and p95 20 %; without the cache 15 % and 6 %; always running the simulator
  beside the critique costs 5 % more and loses 3 points; without speculation p50 rises 19 %;
  with an eager join the refuse path is 3.9x slower.
"""
