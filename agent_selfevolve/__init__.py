"""agent-selfevolve: run an agent on a task many times, search over what it did, train on what worked.

The public API is small; everything else is importable from its module but may change.
"""

from agent_selfevolve.agent import AgentContext, Limits, build_agent_graph
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer
from agent_selfevolve.models import make_model
from agent_selfevolve.setups import AgentSetup, get_setup, load_setup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task, TaskFileError, load_tasks
from agent_selfevolve.trajectory import Trajectory

__all__ = ["AgentContext", "AgentSetup", "AttemptSpec", "Limits", "Task", "TaskFileError", "Trajectory",
           "TrajectoryStore", "build_agent_graph", "get_setup", "load_setup", "load_tasks", "make_model", "run_attempt",
           "sqlite_checkpointer"]
__version__ = "0.1.0"
