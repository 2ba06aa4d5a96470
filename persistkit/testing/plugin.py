"""pytest plugin for persistkit (``pytest11`` entry point).

Import-light by design: nothing heavy (hypothesis, cryptography, torch,
sklearn) is imported here; fixtures import their machinery when used.
"""
