"""Multi-turn sessions: the model, the store interface and its in-memory and Redis implementations."""
