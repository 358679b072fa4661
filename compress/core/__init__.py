"""The bottom layer: errors, the strict config base, registries, and paths (output guard, atomic writes, run lock)."""
