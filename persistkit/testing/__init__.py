"""The persistence verifier: pytest plugin, strategies and crash/fault/lifecycle harnesses."""
