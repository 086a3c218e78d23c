"""The README's module table names every module of the package, each with its job."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "basenode"


def module_table() -> dict:
    """README row -> its text: `basenode/x.py` rows, and `basenode/pkg/` rows that name their modules."""
    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| (`basenode/[^|]+`) \| (.+) \|$", line)
        if m:
            for name in re.findall(r"`(basenode/[^`]+)`", m.group(1)):
                rows[name] = m.group(2)
    return rows


def test_every_module_is_in_the_readme_module_table_with_its_job():
    rows = module_table()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path.name in ("__init__.py", "__main__.py") or relative in rows:
            continue
        package = relative.rsplit("/", 1)[0] + "/"
        if f"`{path.stem}`" in rows.get(package, "") or f"`{path.stem}.py`" in rows.get(package, ""):
            continue
        missing.append(relative)
    assert missing == []
    assert all(len(job) > 10 for job in rows.values())


def test_the_module_table_names_no_module_that_is_gone():
    gone = [name for name in module_table() if not (ROOT / name).exists()]
    assert gone == []
