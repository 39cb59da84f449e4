"""The package's shape: the README's picture of the tiers is the import contract that `lint-imports` enforces, every
package of `diffgame/` sits in a tier, and each says its one job in its `__init__` docstring."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contract() -> list[list[str]]:
    """The layers contract's tiers, top first, each a list of package names without the `diffgame.` prefix."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers, = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip().removeprefix("diffgame.") for name in tier.split("|")] for tier in layers]


def _picture() -> list[tuple[list[str], str]]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- layers:[^>]*-->\n```\n(.*?)```\n<!-- /layers -->", readme, re.S)
    assert block, "README.md has no layers picture between its markers"
    rows = []
    for line in block.group(1).splitlines():
        names, job = re.match(r"^(\S+(?: \| \S+)*)\s{2,}(.+)$", line).groups()
        rows.append(([n.strip() for n in names.split("|")], job))
    return rows


def test_the_readme_picture_is_the_contract():
    assert [names for names, _ in _picture()] == _contract()


def test_every_package_and_top_module_is_in_a_tier():
    tiers = {name for tier in _contract() for name in tier}
    packages = {p.parent.name for p in (ROOT / "diffgame").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "diffgame").glob("*.py")} - {"__init__"}
    assert packages | modules == tiers, (packages | modules) ^ tiers


def test_every_package_says_its_job():
    for init in sorted((ROOT / "diffgame").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 8, f"{init.relative_to(ROOT)} has no docstring saying its job"
