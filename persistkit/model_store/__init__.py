"""Model stores: versioned bundles, ``SYMBOL/AGENT/TIMEFRAME/<stamp>.models``, in a directory or a bucket.

``ModelStore`` (``store.py``) is one class over the ``VersionSpace`` protocol (``space.py``), with a
directory implementation (``local.py``) and an object-store one (``bucket.py``). Versions are
``Version`` values (``version.py``).
"""

from persistkit.model_store.bucket import LATEST, NAME_WINDOW, ORPHAN_GRACE, VERSION_RECORD, default_cache_dir
from persistkit.model_store.local import CONFIG_SUFFIX, config_path
from persistkit.model_store.space import ALIASES, STORE_FILE, StoreKey, StoreSettings, VersionSpace
from persistkit.model_store.store import ModelStore
from persistkit.model_store.version import AliasEvent, Version
from persistkit.naming import MODEL_SUFFIX as SUFFIX
from persistkit.naming import MODEL_VERSIONS as VERSIONS
from persistkit.naming import safe_component

__all__ = [
    "ALIASES",
    "CONFIG_SUFFIX",
    "LATEST",
    "NAME_WINDOW",
    "ORPHAN_GRACE",
    "STORE_FILE",
    "SUFFIX",
    "VERSIONS",
    "VERSION_RECORD",
    "AliasEvent",
    "ModelStore",
    "StoreKey",
    "StoreSettings",
    "Version",
    "VersionSpace",
    "config_path",
    "default_cache_dir",
    "safe_component",
]
