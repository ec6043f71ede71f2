"""The package version, whose one source is package.xml (the file ROS tools read).

setup.py reads the same file, so `pip install -e .`, `colcon build` and
`bootstap_ros.__version__` agree; CHANGELOG.rst's newest section names it too.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

PACKAGE = "bootstap_ros"


def manifest_version(path: Path) -> str:
    """<version> of a package.xml; ValueError when the file is not bootstap_ros's or has none."""
    root = ET.parse(path).getroot()
    if root.findtext("name", "").strip() != PACKAGE:
        raise ValueError(f"{path} is not the package.xml of {PACKAGE}")
    version = root.findtext("version", "").strip()
    if not version:
        raise ValueError(f"{path} has no <version>")
    return version


def version() -> str:
    """From package.xml beside the package (a source checkout), else from the installed
    distribution's metadata (written from package.xml by setup.py), else 'unknown'."""
    manifest = Path(__file__).resolve().parents[1] / "package.xml"
    if manifest.is_file():
        try:
            return manifest_version(manifest)
        except (ValueError, ET.ParseError):
            pass
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"
