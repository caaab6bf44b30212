"""Thrifty's gateway: an OpenAI-compatible HTTP front over vLLM backends."""
