"""The object-store model: recording, faults, in-memory stores and crash states for buckets."""

from persistkit.testing.objects.objects import *  # noqa: F403
from persistkit.testing.objects.objects import __all__ as __all__
