"""moat: a declarative runtime for adaptive LLM request pipelines.

The public API: load a graph, write node plugins, run requests, read what happened.
"""

from __future__ import annotations

from engine.api import BatchSummary, Pipeline, run_sync
from engine.errors import (
    BudgetExceeded,
    CircuitOpen,
    EgressBlocked,
    EvaluationError,
    ExpressionError,
    MoatError,
    NodeError,
    NodeTimeout,
    PluginError,
    PolicyError,
    RateLimited,
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
from engine.plugin.context import Completion, ModelClient, NodeContext, RequestInfo, SharedState
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
    "RateLimited",
    "Registry",
    "RequestInfo",
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
    "check_file",
    "diff_policies",
    "load_graph",
    "load_graph_text",
    "load_policy_file",
    "request_report",
    "rollback_policy",
    "run_sync",
]
