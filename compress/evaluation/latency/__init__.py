"""The single latency protocol: timing primitives, isolated workers, the environment record, the bench."""
