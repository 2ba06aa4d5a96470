"""State stores for long-running processes: consistent checkpoints, journaled logs, recovery."""

from persistkit.state.bounded import BoundedLog
from persistkit.state.store import Checkpoint, ComponentReport, LoadReport, Persistent, StateStore

__all__ = ["BoundedLog", "Checkpoint", "ComponentReport", "LoadReport", "Persistent", "StateStore"]
