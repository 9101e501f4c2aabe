"""Machinery shared by every stage: errors, atomic file I/O, output paths, contexts."""
