"""One way to print a size, everywhere persistkit shows one (CLI tables, check figures, reports)."""

from __future__ import annotations

__all__ = ["size"]


def size(n: int) -> str:
    """``812 B``, ``1.7 KiB``, ``3.0 MiB``: binary units, one decimal above a KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
