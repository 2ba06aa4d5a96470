"""A small, real trading bot and training script built on persistkit: the demo and smoke-test target."""
