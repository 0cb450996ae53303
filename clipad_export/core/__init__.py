"""Project-wide helpers with no model dependency: the user-facing error, atomic writes, file
hashes and progress bars."""
