"""The local file-system model: test file systems, typed operations, crash states."""
