"""STORAGE: the one validating reader of the small documents persistkit keeps in a bucket.

Pointers (``LATEST.json``, ``BACKUP.json``), alias indexes, records beside uploaded objects,
``store.json`` and archive check markers are read from a bucket, and a bucket is untrusted input:
anyone who can write to it can put anything there. Every one of them is read here:

- with a size cap and a deadline (``ObjectStore.get(key, limit=)``: the body is read in chunks
  and refused past the cap, and the whole request has a deadline that allows for a slow link);
- as strict JSON: no ``NaN``/``Infinity``, no duplicate keys, no nesting deep enough to
  exhaust the stack;
- into a typed value by a parser built from ``Fields``: every number is finite and in its range,
  every name passes the rule in ``persistkit.naming`` that says what such a name may be.

Anything else is an ``IntegrityError`` naming the object, the field and what to do. A parser
never builds a path from a bucket-supplied string itself: it asks ``persistkit.naming`` first.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from persistkit.errors import IntegrityError

if TYPE_CHECKING:
    from persistkit.io.objects import ObjectStore

__all__ = [
    "DOCUMENT_LIMIT",
    "DocumentError",
    "Fields",
    "load_strict_json",
    "parse_document",
    "read_document",
]

T = TypeVar("T")

DOCUMENT_LIMIT = (
    1 << 20
)  # pointers, records, store settings: a few hundred bytes; anything far larger is not one
LATEST_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: the last second a datetime can hold
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DocumentError(ValueError):
    """One field of a document is wrong: ``field`` names it (``files['x'].size``), ``what`` says how."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"field {field} {what}" if field else what)
        self.field = field
        self.what = what


def _refuse_constant(name: str) -> float:
    raise DocumentError("", f"holds {name}, which is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise DocumentError(repr(key), "appears twice (which one counts would depend on the reader)")
        doc[key] = value
    return doc


def load_strict_json(data: bytes) -> Any:
    """JSON from untrusted bytes: UTF-8, no NaN/Infinity, no duplicate keys; DocumentError otherwise."""
    try:
        return json.loads(
            data.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except DocumentError:
        raise
    except UnicodeDecodeError as err:
        raise DocumentError("", f"is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except RecursionError as err:
        raise DocumentError("", "nests too deep to be a persistkit document") from err
    except ValueError as err:  # json.JSONDecodeError, and ints of more digits than Python converts
        raise DocumentError("", f"is not JSON ({err})") from err


class Fields:
    """A JSON object from a bucket, read field by field into typed values.

    Each accessor raises ``DocumentError`` naming the field (with its path from the document's
    top) when the value is missing, of another type or out of its range.
    """

    def __init__(self, value: object, where: str = "") -> None:
        if not isinstance(value, dict):
            raise DocumentError(where, "is not a JSON object")
        self.value: dict[str, Any] = value
        self.where = where

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def __contains__(self, name: str) -> bool:
        return name in self.value

    def raw(self, name: str) -> Any:
        if name not in self.value:
            raise DocumentError(self.path(name), "is missing")
        return self.value[name]

    def text(self, name: str, *, check: Callable[[str], bool] | None = None, what: str = "a string") -> str:
        value = self.raw(name)
        if not isinstance(value, str) or (check is not None and not check(value)):
            raise DocumentError(self.path(name), f"is not {what}")
        return value

    def optional_text(
        self, name: str, *, check: Callable[[str], bool] | None = None, what: str = "a string"
    ) -> str | None:
        if self.value.get(name) is None:
            return None
        return self.text(name, check=check, what=what)

    def one_of(self, name: str, choices: Sequence[object]) -> Any:
        value = self.raw(name)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise DocumentError(self.path(name), f"is not one of {', '.join(map(repr, choices))}")
        return value

    def integer(self, name: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
        value = self.raw(name)
        if type(value) is not int or not low <= value <= high:
            raise DocumentError(self.path(name), f"is not a whole number from {low} to {high}")
        return value

    def number(self, name: str, *, low: float, high: float) -> float:
        value = self.raw(name)
        if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
            raise DocumentError(self.path(name), f"is not a finite number from {low:g} to {high:g}")
        return float(value)

    def epoch(self, name: str) -> float:
        """Seconds since 1970 that a datetime can hold (never NaN, Infinity or 1e300)."""
        return self.number(name, low=0.0, high=LATEST_EPOCH)

    def moment(self, name: str, *, optional: bool = False) -> str | None:
        """An ISO 8601 time with a time zone, as persistkit writes it (returned as written)."""
        value = self.value.get(name) if optional else self.raw(name)
        if value is None and optional:
            return None
        try:
            if not isinstance(value, str) or len(value) > 64:
                raise ValueError(value)
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise DocumentError(self.path(name), "is not an ISO 8601 time with a time zone")
        return value

    def boolean(self, name: str, *, default: bool | None = None) -> bool:
        value = self.value.get(name, default) if default is not None else self.raw(name)
        if type(value) is not bool:
            raise DocumentError(self.path(name), "is not true or false")
        return value

    def sha256(self, name: str) -> str:
        return self.text(name, check=lambda v: _SHA256.fullmatch(v) is not None, what="a hex sha256")

    def table(self, name: str) -> Fields:
        return Fields(self.raw(name), self.path(name))

    def entries(self, name: str) -> Iterator[tuple[str, Fields]]:
        """The members of the object ``name`` holds, each as Fields (its key is the caller's to check)."""
        table = self.table(name)
        for key, value in table.value.items():
            yield key, Fields(value, f"{table.where}[{key!r}]")

    def items(self, name: str, *, most: int = 1_000_000) -> list[Fields]:
        value = self.raw(name)
        if not isinstance(value, list) or len(value) > most:
            raise DocumentError(self.path(name), f"is not a list of at most {most} entries")
        return [Fields(v, f"{self.path(name)}[{i}]") for i, v in enumerate(value)]


def parse_document(url: str, data: bytes, parse: Callable[[Fields], T], *, what: str, advice: str) -> T:
    """``parse`` applied to the JSON object in ``data``; an IntegrityError naming ``url`` otherwise.

    ``what`` names the document in the message ("the latest pointer"), ``advice`` says what to do.
    """
    try:
        return parse(Fields(load_strict_json(data)))
    except DocumentError as err:
        field = err.field or "(the document)"
        raise IntegrityError(
            f"{url}: {what} is unreadable ({err}): it was damaged, or not written by persistkit. {advice}",
            path=url,
            field=field,
        ) from err


def read_document(
    store: ObjectStore,
    key: str,
    parse: Callable[[Fields], T],
    *,
    what: str,
    advice: str,
    limit: int = DOCUMENT_LIMIT,
) -> tuple[T, str | None] | None:
    """(the parsed document at ``key``, its etag), or None if there is no such object.

    Read with ``limit`` as its size cap (and the deadline that goes with it), then parsed with
    ``parse_document``.
    """
    found = store.get_or_none(key, limit=limit)
    if found is None:
        return None
    return parse_document(store.url_of(key), found.data, parse, what=what, advice=advice), found.etag
