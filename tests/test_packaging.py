"""The wheel holds every module and data file of the four packages: built, installed in a fresh venv, imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "router", "budgeter", "moe_runtime")
# Modules whose dependency lives in another environment (vLLM's, the router-training one): the wheel must
# still hold them, and importing them may fail only for want of that dependency.
OTHER_ENVIRONMENTS = {"vllm", "flwr"}

_CHECK = """
import importlib, importlib.util, json, sys
from importlib import resources
venv, names, optional = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
report = {"imported": [], "needs": {}, "outside": [], "failed": {}}
for name in names:
    spec = importlib.util.find_spec(name)
    if spec is None or not (spec.origin or "").startswith(venv):
        report["outside"].append([name, None if spec is None else spec.origin])
        continue
    try:
        importlib.import_module(name)
    except ImportError as exc:
        top = (exc.name or "").split(".")[0]
        (report["needs"] if top in optional else report["failed"])[name] = repr(exc)
    except Exception as exc:
        report["failed"][name] = repr(exc)
    else:
        report["imported"].append(name)
report["solvers.yaml"] = resources.files("thrifty.budgeter.world").joinpath("solvers.yaml").is_file()
report["typed"] = [resources.files(f"thrifty.{p}").joinpath("py.typed").is_file() for p in %r]
print(json.dumps(report))
""" % (PACKAGES,)


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append("thrifty." + ".".join(parts))
    return names


def test_the_wheel_installs_every_module(tmp_path: Path) -> None:
    # Built from a copy of what a source distribution holds, so that nothing left in the working tree (a
    # build/ folder, caches) can end up in the wheel.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("thrifty-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    # Third-party dependencies come from this environment's site-packages, which is appended to the new
    # venv's path as a plain folder: its editable-install hook (a .pth file) is not run there, so thrifty
    # itself can only come from the wheel.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    names = _modules()
    done = subprocess.run(
        [str(python), "-c", _CHECK, str(venv), json.dumps(names), json.dumps(sorted(OTHER_ENVIRONMENTS))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outside"] == [], f"modules not installed from the wheel: {report['outside']}"
    assert report["failed"] == {}, report["failed"]
    assert sorted(report["imported"] + list(report["needs"])) == sorted(names)
    assert set(report["needs"]) <= {
        "thrifty.router.federated.client_app",
        "thrifty.router.federated.records",
        "thrifty.router.federated.server_app",
        "thrifty.moe_runtime.vllm_layer",
    }, report["needs"]
    assert report["solvers.yaml"] and all(report["typed"])

    version = subprocess.run([str(venv / "bin" / "thrifty"), "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.strip().startswith("thrifty "), version.stdout + version.stderr
