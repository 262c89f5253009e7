"""Copies of the shipped graphs whose simulated models run 50x faster (for CLI tests), and
a one-model graph at any simulated speed, and the triage graph the policy tests apply to."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"


def fast_copy(name: str, dest: Path, *, time_scale: float = 0.02) -> Path:
    """Write `graphs/NAME.yaml` to `dest` with every sim model's latency scaled down."""
    text = (GRAPHS / f"{name}.yaml").read_text()
    text = re.sub(
        r"\{provider: sim, profile: (\w+)\}",
        rf"{{provider: sim, profile: \1, time_scale: {time_scale}}}",
        text,
    )
    text = text.replace("policy: ../policies/", f"policy: {ROOT / 'policies'}/")
    path = dest / f"{name}.yaml"
    path.write_text(text)
    return path


ONE_MODEL = """
moat: 1
name: NAME
models:
  small: {provider: sim, profile: small, time_scale: TIME_SCALE}
input:
  type: object
  required: [prompt]
  properties: {prompt: {type: string, minLength: 1}}
nodes:
  answer: {type: model, with: {model: small, prompt: "{{ input.prompt }}"}}
output:
  text: answer.text
"""


def one_model_graph(name: str, time_scale: float) -> str:
    """A graph answering `input.prompt` with one call of the small sim model, its latency
    scaled by `time_scale`."""
    return ONE_MODEL.replace("NAME", name).replace("TIME_SCALE", f"{time_scale:g}")


TRIAGE_GRAPH = """\
moat: 1
name: triage
plugins: [tests.support.graph_nodes]
models:
  small: {provider: sim, profile: small}
policy: ../policies/triage.yaml
nodes:
  check:
    type: review
    with:
      threshold: "{{ policy.router.threshold }}"
output:
  a: check.action
"""
"""A graph `graphs/triage.yaml` reading the policy `../policies/triage.yaml` (`router.threshold`):
what `moat policy apply` checks a triage policy against."""
