"""How a save is seen: strace attached to the process (syscalls), or Python interception (fallback)."""

from persistkit.testing.observe.observer import (
    DEFAULT_VOLATILE,
    OBSERVERS,
    NotJudgeable,
    Observation,
    ObserverNotice,
    check_explained,
    choose,
    from_trace,
    observe_command,
    observe_save,
    set_default,
)

__all__ = [
    "DEFAULT_VOLATILE",
    "OBSERVERS",
    "NotJudgeable",
    "Observation",
    "ObserverNotice",
    "check_explained",
    "choose",
    "from_trace",
    "observe_command",
    "observe_save",
    "set_default",
]
