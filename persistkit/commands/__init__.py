"""CLI subcommands, one module each; imported lazily by persistkit.cli."""
