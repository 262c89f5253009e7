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

### Findings (investigated on copies of the graph and policy, 1,000 requests, seed 1)

- **Quality is lost to false refusals, by design of the judges.** The sim's small model
  flags a benign request as harmful with probability `(1 - accuracy) * 0.4`, about 18 %
  per call (accuracy `capability + 0.05 - 0.15 * difficulty`, 0.55 capability). The
  flagship asks a small model twice or more (the risk review, then the critique in every
  cycle), and any single `refuse` ends the request: about 12 % of benign requests are
  refused by the risk review and a further ~29 % inside the loop, so ~40 % of benign
  requests are refused (baseline: ~2.5 %, its review runs on `large`). Refusal recall is
  *higher* than the baseline's (0.88-0.92 vs 0.78), answer accuracy far lower.
- **`flagship-no-early-convergence` is broken, not slow.** Its policy sets
  `converge.early_min_score: 1.01`, which the `converge` node's config rejects (`<= 1`), so
  every request that reaches the loop fails (`failed` status, quality ~4). Policy
  validation checks keys and types, not node bounds, so it was accepted. With `1.0`
  (a clean critic score never exceeds 0.97) the ablation measures (n = 1,000): cost 0.00259,
  p95 8,998 ms, quality 53.0 — i.e. early convergence saves ~41 % of the cost.
- **p95 is set by the large-model revision.** A cycle-1 draft is sent to `revise` on
  `large` (~3.3 s per call, 70 % of the flagship's cost) whenever the small critique
  misjudges a correct draft (~25 %) or early convergence is rejected; a critic score is
  uniform in 0.75-0.97 for a clean draft, so `early_min_score: 0.8` alone rejects ~23 % of
  clean cycle-1 drafts. Requests that reach cycle 2-3 take 5-10 s.
- Measured effect of changes (n = 1,000; baseline cost 0.00391, p95 6,620 ms, quality 90.5):

  | variant | cost/case | p95 ms | quality | false refusals | refuse p50 ms |
  |---|---|---|---|---|---|
  | flagship as shipped | 0.00152 | 8,139 | 59.0 | 0.41 | 316 |
  | policy `converge.early_min_score: 0.75` | 0.00121 | 7,049 | 60.9 | 0.38 | 316 |
  | + `revised` on `medium` | 0.00063 | 4,329 | 59.7 | 0.39 | 316 |
  | + `critique` on `medium` (and revise on medium) | 0.00099 | 5,211 | 69.7 | 0.28 | 317 |
  | + a loop refusal needs risk action != `proceed` | 0.00078 | 4,923 | 73.7 | 0.21 | 316 |
  | + that, with the risk review on `medium` | 0.00118 | 4,934 | 81.7 | 0.13 | 777 |

  Cost and p95 goals are within reach with policy/graph changes (lower `early_min_score`,
  revise on `medium`); the quality goal is not, with small- or medium-model judges whose
  false-positive rate the sim fixes at 10-18 % per call; a refusal would need a
  confirmation by `large` (which moves the refuse path to ~1.7 s and adds cost).
"""
