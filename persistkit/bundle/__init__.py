"""Model bundles: several models and their metadata in one encrypted, authenticated file.

::

    path = pk.save_bundle("models/x.models", {"policy": ppo, "signal": pipeline, "q_table": q},
                          metadata={"ensemble_weights": [0.6, 0.4]}, config=cfg)
    b = pk.load_bundle(path, env=env)     # key read from models/x.models.key, written at save time
    b.models["policy"].learn(1000, reset_num_timesteps=False)

The container layout, the manifest and how it is authenticated are described
in ``persistkit.format.manifest``; member encodings in
``persistkit.format.codecs``. Every save is atomic (``persistkit.io``): a
crash leaves the old bundle or the new one, whole.

Trust. An encrypted bundle is authenticated before anything in it is parsed,
so its members load with the pinned allowlists (plus ``trusted=[...]``). An
unencrypted bundle has digests but no authenticity: members that construct
objects (scikit-learn, SB3, models embedded in tree values) load only when the
caller opts in with ``trusted=True`` (the pinned allowlists) or
``trusted=[names]`` (the allowlists plus those names); otherwise
``UntrustedTypeError`` lists the types.

The package, along its seams: ``writer`` (``save_bundle``), ``reader`` (``load_bundle``,
``inspect``), ``verify`` (``verify``, ``check_intact``) and ``provenance`` (environment,
git commit, version skew). ``persistkit.bundle`` re-exports every public name.
"""

from persistkit.bundle.provenance import VersionSkewWarning as VersionSkewWarning
from persistkit.bundle.provenance import environment as environment
from persistkit.bundle.reader import Bundle as Bundle
from persistkit.bundle.reader import inspect as inspect
from persistkit.bundle.reader import load_bundle as load_bundle
from persistkit.bundle.verify import MemberReport as MemberReport
from persistkit.bundle.verify import Report as Report
from persistkit.bundle.verify import check_intact as check_intact
from persistkit.bundle.verify import verify as verify
from persistkit.bundle.writer import STREAM_THRESHOLD as STREAM_THRESHOLD
from persistkit.bundle.writer import check_member_name as check_member_name
from persistkit.bundle.writer import save_bundle as save_bundle

# KEY_SUFFIX and default_key_path live in persistkit.keys; re-exported here for compatibility.
from persistkit.keys import KEY_SUFFIX as KEY_SUFFIX
from persistkit.keys import default_key_path as default_key_path

__all__ = [
    "Bundle",
    "MemberReport",
    "Report",
    "VersionSkewWarning",
    "check_intact",
    "inspect",
    "load_bundle",
    "save_bundle",
    "verify",
]
