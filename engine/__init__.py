"""moat: a declarative runtime for adaptive LLM request pipelines.

The public API: load a graph, write node plugins, run requests, read what happened.
"""

from __future__ import annotations

from engine.context import Completion, ModelClient, NodeContext, RequestInfo, SharedState
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
    RequestStatus,
    Sink,
)
from engine.graph import Graph
from engine.loader import GraphErrors, check_file, load_graph, load_graph_text
from engine.node import Node
from engine.registry import Registry

__all__ = [
    "BudgetExceeded",
    "CacheStatus",
    "CallKind",
    "CallOutcome",
    "CircuitOpen",
    "Completion",
    "EgressBlocked",
    "EvaluationError",
    "EventType",
    "ExpressionError",
    "Graph",
    "GraphErrors",
    "MemorySink",
    "MoatError",
    "ModelClient",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeOutcome",
    "NodeStatus",
    "NodeTimeout",
    "PluginError",
    "PolicyError",
    "RateLimited",
    "Registry",
    "RequestInfo",
    "RequestStatus",
    "SharedState",
    "Sink",
    "SpecError",
    "StoreError",
    "TransientError",
    "check_file",
    "load_graph",
    "load_graph_text",
]
