"""How a save's operations are seen and how faults are aimed at them (strace observer, seccomp injector)."""
