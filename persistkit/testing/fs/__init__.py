"""The local file-system model: typed operations, the inode/page model, crash states, test file systems.

Read in pipeline order: ``ops`` (what observers record), ``model`` (what the
log did, inode by inode and page by page), ``states`` (which states a crash can
leave, and how they are chosen), ``materialize`` (building them in the root and
putting it back). ``testfs``/``recordfs``/``faultfs`` wrap ``persistkit.io``
for persistkit's own saves.
"""

from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.ops import Op, OpKind, Spool
from persistkit.testing.fs.snapshot import Entry, Snapshot, Workshop
from persistkit.testing.fs.states import CrashSimulator, CrashState, Loss, Plan, Stats

__all__ = [
    "CrashSimulator",
    "CrashState",
    "Entry",
    "FsModel",
    "Loss",
    "Op",
    "OpKind",
    "Plan",
    "Snapshot",
    "Spool",
    "Stats",
    "Workshop",
]
