import atexit
import os
import shutil
import tempfile

# Tests never read a developer's own settings.
for key in [k for k in os.environ if k.startswith("THRIFTY_") or k == "PROMETHEUS_MULTIPROC_DIR"]:
    del os.environ[key]

# Query vectors are cached per text and embedder (router training); tests keep theirs out of ~/.cache, and
# every session starts with none, so a test never passes on vectors an earlier session left behind.
_cache = tempfile.mkdtemp(prefix="thrifty-embeddings-")
os.environ["THRIFTY_EMBEDDING_CACHE"] = _cache
atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# Federated training tests need Flower, which lives in the router-training environment (.venv-router):
# `make test` runs them there. Anywhere else they are left out, and the header says so.
try:
    import flwr  # noqa: F401

    collect_ignore: list[str] = []
except ImportError:
    collect_ignore = ["federated"]


def pytest_report_header() -> str | None:
    if collect_ignore:
        return "tests/federated not collected here (no Flower): run them with `make federated`"
    return None
