"""TensorRT engines: the parser check (``parser_check``), the inspector reader (``inspector``), the
plan rules and load-time refusals (``plan``) and the build (``build``). TensorRT itself is imported
only where an engine is built or loaded."""
