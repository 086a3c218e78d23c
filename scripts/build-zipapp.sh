#!/usr/bin/env bash
# Builds the basenode zipapp with shiv: one file, pure Python, for CPython 3.9-3.13 on any
# architecture. Usage: scripts/build-zipapp.sh PYTHON OUTPUT
set -euo pipefail
python=$1
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build/zipapp"
site="$build/site-packages"

# setuptools builds the package in build/lib and keeps there what was since moved or deleted.
rm -rf "$build" "$root/build/lib"
mkdir -p "$site" "$(dirname "$out")"

# Pure-Python wheels only, resolved for the oldest Python we support. MarkupSafe ships no
# pure wheel: take the platform wheel and drop its optional C speedups below (MarkupSafe
# falls back to its pure-Python implementation when _speedups is absent).
grep -v -i '^markupsafe==' "$root/requirements/runtime.lock" >"$build/pure.txt"
"$python" -m pip install -q --disable-pip-version-check --no-compile --no-deps --target "$site" \
    --only-binary=:all: --platform any --implementation py --abi none --python-version 3.9 \
    -r "$build/pure.txt"
rm -rf "$site/bin"  # console scripts of the bundled packages: not used, and pip warns on reinstall
"$python" -m pip install -q --disable-pip-version-check --no-compile --no-deps --target "$site" \
    "$(grep -i '^markupsafe==' "$root/requirements/runtime.lock")"
"$python" -m pip install -q --disable-pip-version-check --no-compile --no-deps --target "$site" "$root"
find "$site" \( -name '*.so' -o -name '*.pyd' -o -name '*.c' \) -delete
rm -rf "$site/bin" "$site/docs" "$site"/*.txt  # scripts and stray files some wheels put at the top
# The default template travels inside the package.
mkdir -p "$site/basenode/templates"
cp -R "$root/templates/." "$site/basenode/templates/"

"$python" -m shiv --site-packages "$site" --reproducible \
    -p '/usr/bin/env python3' -e basenode.cli:main -o "$build/basenode.pyz" >/dev/null

# Swap shiv's __main__.py for ours (extraction root that works on a read-only root fs).
"$python" - "$build/basenode.pyz" "$out" "$root/scripts/zipapp_main.py" <<'PY'
import sys
import zipfile

src, dst, main = sys.argv[1:]
with open(src, "rb") as f:
    shebang = f.readline()
with zipfile.ZipFile(src) as zin, open(dst + ".tmp", "wb") as raw:
    raw.write(shebang)
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = open(main, "rb").read() if info.filename == "__main__.py" else zin.read(info)
            zout.writestr(info, data)
PY
chmod 755 "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(du -h "$out" | cut -f1))"
