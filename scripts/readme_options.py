"""Writes the option table (basenode/config/options.py) into README.md as its options table.

Usage: .venv/bin/python scripts/readme_options.py (tests/unit/test_config_options.py checks the result)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from basenode.config import readme_table  # noqa: E402

# The table under "### Options and environment": its header row to the first line that is no row.
TABLE_RE = re.compile(r"(### Options and environment\n\n)(\|.*\n)+")


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new, count = TABLE_RE.subn(lambda m: m.group(1) + readme_table(), text, count=1)
    if count != 1:
        print("README.md: no options table under '### Options and environment'", file=sys.stderr)
        return 1
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
