"""Quick start for a fresh clone: needs only Python 3.11.

    python3.11 dev.py serve    # set up, build the example models if absent, serve them on :8080
    python3.11 dev.py test     # set up, run the test suite
    python3.11 dev.py lint     # set up, run the linter, the formatter's check and the type checker (CI runs it)

Setup is a virtualenv in .venv with this project installed (editable) and its
extras; it is redone only when pyproject.toml changes. Extra arguments after
the verb go to the service (``serve``) or to pytest (``test``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
EXTRAS = {"serve": "serve,train", "test": "serve,train,dev", "lint": "serve,train,dev"}
EXAMPLES = ("digits", "diamonds", "penguins")


def run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def ensure_env(extras: str) -> None:
    """Create .venv and install the project with ``extras`` unless already done for this pyproject."""
    stamp_text = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{extras.replace(',', '-')}"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        return
    if not PYTHON.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".[{extras}]")
    stamp.write_text(stamp_text)


def missing_examples(models_dir: Path) -> list[str]:
    return [name for name in EXAMPLES if not any((models_dir / name).glob("*/manifest.json"))]


def serve(args: list[str]) -> None:
    ensure_env(EXTRAS["serve"])
    models_dir = ROOT / os.environ.get("SERVING_MODELS", "models")
    missing = missing_examples(models_dir)
    if missing:
        run(PYTHON, "-m", "training", "examples", "--out", models_dir, *missing)
    os.execv(PYTHON, [str(PYTHON), "-m", "service", "--models", str(models_dir), *args])


def test(args: list[str]) -> None:
    ensure_env(EXTRAS["test"])
    os.chdir(ROOT)
    os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *args])


def lint(args: list[str]) -> None:
    """ruff (lint rules and formatting, configured in pyproject.toml) over the code, mypy over bundle/ and service/."""
    ensure_env(EXTRAS["lint"])
    run(PYTHON, "-m", "ruff", "check", *(args or ["."]))
    run(PYTHON, "-m", "ruff", "format", "--check", *(args or ["."]))
    run(PYTHON, "-m", "mypy")


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 -- dev.py may be started by an older python3
        sys.exit("dev.py needs Python 3.11 or newer")
    verbs = {"serve": serve, "test": test, "lint": lint}
    if len(sys.argv) < 2 or sys.argv[1] not in verbs:
        sys.exit(__doc__)
    verbs[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
