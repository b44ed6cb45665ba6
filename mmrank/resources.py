"""Where the bundled pipelines and demo assets are: inside the installed package (a wheel ships the
repository's top-level ``pipelines/`` and ``assets/`` as ``mmrank/pipelines`` and ``mmrank/assets``),
or at the top of a source checkout."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The bundled folder ``name`` (``pipelines`` or ``assets``): in the package when installed from a
    wheel, else beside the package in a checkout (or an editable install)."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


PIPELINES_DIR = bundled_dir("pipelines")
ASSETS_DIR = bundled_dir("assets")


def bundled_pipelines() -> list[str]:
    """The names of the pipelines that come with mmrank (``docqa-text`` ...)."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")) if PIPELINES_DIR.is_dir() else []
