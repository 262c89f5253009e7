"""moat: a declarative runtime for adaptive LLM request pipelines.

The public API: load a graph, write node plugins, run requests, read what happened.

Names are imported on first use (PEP 562): `import engine.store.reads` or `moat runs`
must not pay for the scheduler, the graph compiler and pydantic (over a second of a
command's start on a loaded machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.api import BatchSummary, Pipeline, run_sync
    from engine.errors import (
        BudgetExceeded,
        CircuitOpen,
        DuplicateRequest,
        EgressBlocked,
        EvaluationError,
        ExpressionError,
        MoatError,
        NodeError,
        NodeTimeout,
        PluginError,
        PolicyError,
        PolicyReadOnly,
        RateLimited,
        RequestNotFinished,
        SpecError,
        StoreError,
        TransientError,
    )
    from engine.events import (
        CacheStatus,
        CallKind,
        CallOutcome,
        EventType,
        MemorySink,
        NodeOutcome,
        NodeStatus,
        PolicyPin,
        RequestStatus,
        Sink,
    )
    from engine.graph.compiled import Graph
    from engine.graph.loader import GraphErrors, check_file, load_graph, load_graph_text
    from engine.graph.patterns import schema_problem
    from engine.plugin.context import Completion, ModelClient, NodeContext, RequestInfo, SharedState
    from engine.plugin.files import at_check, graph_file, read_text_file
    from engine.plugin.node import Node
    from engine.plugin.registry import Registry
    from engine.policy.manager import (
        AppliedPolicy,
        PolicyManager,
        RolledBack,
        apply_policy,
        diff_policies,
        load_policy_file,
        rollback_policy,
    )
    from engine.report.explain import (
        CycleCard,
        DecisionRow,
        ExecutionStrategy,
        LlmCallRow,
        RequestReport,
        TimelineEntry,
        request_report,
    )
    from engine.requests import BatchItem
    from engine.scheduler.runner import RequestResult, Runner
    from engine.store.store import Store, StoreWriter

_LAZY = {
    "AppliedPolicy": "engine.policy.manager",
    "BatchItem": "engine.requests",
    "BatchSummary": "engine.api",
    "BudgetExceeded": "engine.errors",
    "CacheStatus": "engine.events",
    "CallKind": "engine.events",
    "CallOutcome": "engine.events",
    "CircuitOpen": "engine.errors",
    "Completion": "engine.plugin.context",
    "CycleCard": "engine.report.explain",
    "DecisionRow": "engine.report.explain",
    "DuplicateRequest": "engine.errors",
    "EgressBlocked": "engine.errors",
    "EvaluationError": "engine.errors",
    "EventType": "engine.events",
    "ExecutionStrategy": "engine.report.explain",
    "ExpressionError": "engine.errors",
    "Graph": "engine.graph.compiled",
    "GraphErrors": "engine.graph.loader",
    "LlmCallRow": "engine.report.explain",
    "MemorySink": "engine.events",
    "MoatError": "engine.errors",
    "ModelClient": "engine.plugin.context",
    "Node": "engine.plugin.node",
    "NodeContext": "engine.plugin.context",
    "NodeError": "engine.errors",
    "NodeOutcome": "engine.events",
    "NodeStatus": "engine.events",
    "NodeTimeout": "engine.errors",
    "Pipeline": "engine.api",
    "PluginError": "engine.errors",
    "PolicyError": "engine.errors",
    "PolicyManager": "engine.policy.manager",
    "PolicyPin": "engine.events",
    "PolicyReadOnly": "engine.errors",
    "RateLimited": "engine.errors",
    "Registry": "engine.plugin.registry",
    "RequestInfo": "engine.plugin.context",
    "RequestNotFinished": "engine.errors",
    "RequestReport": "engine.report.explain",
    "RequestResult": "engine.scheduler.runner",
    "RequestStatus": "engine.events",
    "RolledBack": "engine.policy.manager",
    "Runner": "engine.scheduler.runner",
    "SharedState": "engine.plugin.context",
    "Sink": "engine.events",
    "SpecError": "engine.errors",
    "Store": "engine.store.store",
    "StoreError": "engine.errors",
    "StoreWriter": "engine.store.store",
    "TimelineEntry": "engine.report.explain",
    "TransientError": "engine.errors",
    "apply_policy": "engine.policy.manager",
    "check_file": "engine.graph.loader",
    "store_path": "engine.store.store",
    "at_check": "engine.plugin.files",
    "graph_file": "engine.plugin.files",
    "read_text_file": "engine.plugin.files",
    "diff_policies": "engine.policy.manager",
    "load_graph": "engine.graph.loader",
    "load_graph_text": "engine.graph.loader",
    "load_policy_file": "engine.policy.manager",
    "request_report": "engine.report.explain",
    "rollback_policy": "engine.policy.manager",
    "run_sync": "engine.api",
    "schema_problem": "engine.graph.patterns",
}

__all__ = [
    "AppliedPolicy",
    "BatchItem",
    "BatchSummary",
    "BudgetExceeded",
    "CacheStatus",
    "CallKind",
    "CallOutcome",
    "CircuitOpen",
    "Completion",
    "CycleCard",
    "DecisionRow",
    "DuplicateRequest",
    "EgressBlocked",
    "EvaluationError",
    "EventType",
    "ExecutionStrategy",
    "ExpressionError",
    "Graph",
    "GraphErrors",
    "LlmCallRow",
    "MemorySink",
    "MoatError",
    "ModelClient",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeOutcome",
    "NodeStatus",
    "NodeTimeout",
    "Pipeline",
    "PluginError",
    "PolicyError",
    "PolicyManager",
    "PolicyPin",
    "PolicyReadOnly",
    "RateLimited",
    "Registry",
    "RequestInfo",
    "RequestNotFinished",
    "RequestReport",
    "RequestResult",
    "RequestStatus",
    "RolledBack",
    "Runner",
    "SharedState",
    "Sink",
    "SpecError",
    "Store",
    "StoreError",
    "StoreWriter",
    "TimelineEntry",
    "TransientError",
    "apply_policy",
    "at_check",
    "check_file",
    "diff_policies",
    "graph_file",
    "load_graph",
    "load_graph_text",
    "load_policy_file",
    "read_text_file",
    "request_report",
    "rollback_policy",
    "run_sync",
    "schema_problem",
    "store_path",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
