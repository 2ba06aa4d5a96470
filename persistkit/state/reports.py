"""What a StateStore tells its caller: load and checkpoint reports, the recovery warning, the component protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Checkpoint", "ComponentReport", "LoadReport", "Persistent", "StateRecoveredWarning"]


class StateRecoveredWarning(UserWarning):
    """A state store fell back to an older checkpoint; the message names the file and generation."""


@runtime_checkable
class Persistent(Protocol):
    """What a component implements to be stored (``__getstate__``/``__setstate__`` also work)."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


Status = Literal["loaded", "defaults", "migrated", "recovered"]


@dataclass
class ComponentReport:
    name: str
    status: Status
    generation: int | None = None
    stored_version: int | None = None
    version: int = 1
    journal_records: int = 0
    torn_records: int = 0  # torn (never acknowledged) journal records dropped
    detail: str = ""
    torn_bytes: int = 0  # their size
    damaged_records: int = 0  # complete but damaged last journal records dropped (reported as failures)


@dataclass
class LoadReport:
    """What ``load()`` did, per component, plus any fallback it had to make."""

    generation: int | None
    components: dict[str, ComponentReport]
    quarantined: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> ComponentReport:
        return self.components[name]

    @property
    def recovered(self) -> bool:
        return bool(self.failures)

    def summary(self) -> str:
        parts = [f"{n}: {c.status}" for n, c in self.components.items()]
        return f"generation {self.generation}; " + ", ".join(parts)

    def __repr__(self) -> str:
        extra = f", {len(self.failures)} fallback(s)" if self.failures else ""
        return f"<LoadReport {self.summary()}{extra}>"


@dataclass(frozen=True)
class Checkpoint:
    """A committed (or skipped, when nothing changed) checkpoint."""

    generation: int
    sizes: dict[str, int]
    seconds: float
    skipped: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())
