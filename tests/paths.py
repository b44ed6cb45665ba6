"""Where the tests find the repository's own files."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
IMAGES = ASSETS / "images"
