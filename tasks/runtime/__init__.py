"""The pipeline's runtime: cache keys, result storage, inter-process locks, progress."""
