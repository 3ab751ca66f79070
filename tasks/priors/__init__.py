"""The cross-task error prior on disk: fitting it from loss tables, writing and reading it."""
