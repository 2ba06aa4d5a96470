"""POLICY: pure dataclasses that decide; they never touch files."""
