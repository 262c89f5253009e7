"""moat: a declarative runtime for adaptive LLM request pipelines.

The public API: load a graph, write node plugins, run requests, read what happened.
"""

from __future__ import annotations

from engine.api import BatchSummary, Pipeline, run_sync
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
from engine.policy import PolicyManager, PolicyPin
from engine.registry import Registry
from engine.requests import BatchItem
from engine.scheduler import RequestResult, Runner
from engine.store import Store, StoreWriter

__all__ = [
    "BatchItem",
    "BatchSummary",
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
    "Pipeline",
    "PluginError",
    "PolicyError",
    "PolicyManager",
    "PolicyPin",
    "RateLimited",
    "Registry",
    "RequestInfo",
    "RequestResult",
    "RequestStatus",
    "Runner",
    "SharedState",
    "Sink",
    "SpecError",
    "Store",
    "StoreError",
    "StoreWriter",
    "TransientError",
    "check_file",
    "load_graph",
    "load_graph_text",
    "run_sync",
]
