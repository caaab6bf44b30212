import os

# Tests never read a developer's own settings.
for key in [k for k in os.environ if k.startswith("THRIFTY_") or k == "PROMETHEUS_MULTIPROC_DIR"]:
    del os.environ[key]
