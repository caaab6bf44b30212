"""Thrifty's shared kit: what the gateway, its learned stages and the offline jobs all build on.

    artifacts.py   artifact folders: staged writes, manifest.json (one schema), verify on load, atomic swap
    jobs.py        resumable jobs: named stages recorded in state.json, checkpoints, progress bars
    registry.py    stage implementations by name, imported only when chosen
    reload.py      stages backed by an artifact: status(), reload() that keeps the old one on failure
    vllm.py        one managed vLLM OpenAI server process
    vllm_reasoning.py  the `thrifty_r1` reasoning parser, which counts reasoning tokens right (vLLM plugin)

A leaf: nothing here imports any other part of thrifty, so a job can use it without the gateway.
"""
