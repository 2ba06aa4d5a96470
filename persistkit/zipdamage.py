"""The exceptions ``zipfile`` lets escape on damaged or hostile bytes: the one list.

It lives here, beside ``errors.py`` and ``naming.py`` and outside both
``io/`` and ``format/``, because readers on both sides of that line parse zip
files persistkit did not write: ``persistkit.io.zipio`` (archives, sniffing)
and the scikit-learn codec (skops files are zips). ``format/`` never imports
``io/``, so neither can hold it for the other. ``persistkit.io.zipio``
re-exports both names.
"""

from __future__ import annotations

import struct
import zipfile
import zlib

__all__ = ["ZIP_DAMAGE", "ZIP_DAMAGE_OR_IO"]

# Bad offsets and sizes (struct.error, IndexError, OverflowError, ValueError, incl. UnicodeDecodeError),
# an unknown method or version (NotImplementedError), a cut-off or corrupt deflate stream (EOFError,
# zlib.error), a member the central directory names but cannot find (KeyError), an encrypted flag
# (RuntimeError). Every reader of zip files persistkit did not write catches this.
ZIP_DAMAGE: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    ValueError,
    NotImplementedError,
    OverflowError,
    struct.error,
    IndexError,
    KeyError,
    RuntimeError,
)
ZIP_DAMAGE_OR_IO: tuple[type[Exception], ...] = (*ZIP_DAMAGE, OSError)
