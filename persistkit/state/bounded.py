"""BoundedLog: a list-like, size-limited history whose appends are journaled."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from persistkit.errors import FormatError

if TYPE_CHECKING:
    from persistkit.state.store import StateStore

__all__ = ["BoundedLog"]

T = TypeVar("T")


class BoundedLog(Generic[T]):
    """Keeps the newest ``maxlen`` items (trade history, equity curve).

    Unregistered, it is an in-memory bounded list. Registered with a
    ``StateStore``, every ``append``/``extend``/``clear`` is written to the
    store's journal first, so with ``sync="always"`` an item is durable when
    ``append`` returns. Replay on load respects ``maxlen``. ``BoundedLog[Trade](1000)``
    keeps its item type through ``StateStore.register``.
    """

    def __init__(self, maxlen: int, items: Iterable[T] = ()) -> None:
        if type(maxlen) is not int or maxlen <= 0:
            raise ValueError(f"maxlen must be a positive int, not {maxlen!r}")
        self._items: collections.deque[T] = collections.deque(items, maxlen)
        self._store: StateStore | None = None
        self._name = ""
        self._lock = threading.RLock()

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    def _attach(self, store: StateStore, name: str) -> None:
        self._store = store
        self._name = name
        # One lock for the log and its store: a checkpoint and an append never interleave,
        # and there is no lock-order inversion between them.
        self._lock = store.lock

    def append(self, item: T) -> None:
        with self._lock:
            if self._store is not None:
                self._store.journal_append(self._name, item)  # durable first, then visible
            self._items.append(item)

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.append(item)

    def clear(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.journal_clear(self._name)
            self._items.clear()

    def replay_append(self, item: T) -> None:
        """Append without journaling: for replay, or for entries re-derived from other journaled state."""
        self._items.append(item)

    def replay_clear(self) -> None:
        """Clear without journaling (replay)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self._items)[index]
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BoundedLog):
            return self.maxlen == other.maxlen and list(self._items) == list(other._items)
        if isinstance(other, list):
            return list(self._items) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BoundedLog(maxlen={self.maxlen}, len={len(self)})"

    def state_dict(self) -> dict[str, Any]:
        from persistkit.format.tree import Records  # column storage for uniform rows

        with self._lock:
            return {"maxlen": self.maxlen, "items": Records(self._items)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        items = state.get("items") if isinstance(state, Mapping) else None
        if not isinstance(items, (list, tuple)):
            raise FormatError(
                f"BoundedLog {self._name or '(unregistered)'}: load_state_dict() needs a mapping with an "
                f"'items' list, got {_describe(state)}. Pass what state_dict() returned.",
                member=self._name or None,
                field="items",
            )
        with self._lock:
            self._items = collections.deque(items, self.maxlen)


def _describe(state: object) -> str:
    if isinstance(state, Mapping):
        return f"'items' of type {type(state.get('items')).__name__}"
    return f"a {type(state).__name__}"
