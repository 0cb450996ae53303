"""Streaming runtime (backends, sources, sinks): planned, see the runtime issue. Nothing here yet."""
