"""The runtime: backends that serve an artifact directory (the streaming loop comes with the runtime issue)."""
