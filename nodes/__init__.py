"""moat's built-in node plugins, one module per node type, registered under `moat.nodes`."""

from nodes.cache import CacheNode
from nodes.cascade import CascadeNode
from nodes.converge import ConvergeNode
from nodes.critic import CriticNode
from nodes.model import ModelNode
from nodes.redact import RedactNode
from nodes.retrieve import RetrieveNode
from nodes.router import RouterNode
from nodes.simulator import SimulatorNode
from nodes.speculate import SpeculateNode
from nodes.validate import ValidateNode

__all__ = [
    "CacheNode",
    "CascadeNode",
    "ConvergeNode",
    "CriticNode",
    "ModelNode",
    "RedactNode",
    "RetrieveNode",
    "RouterNode",
    "SimulatorNode",
    "SpeculateNode",
    "ValidateNode",
]
