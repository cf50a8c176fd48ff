#!/usr/bin/env bash
# Refresh requirements.lock: every distribution `pip install -e '.[test]'` brings, at an exact version.
#   scripts/lock.sh                 resolve afresh: install pas[test] unpinned into a new venv, freeze it (minutes)
#   scripts/lock.sh --from VENV     freeze an existing venv instead (the one that built the committed results)
#   --out FILE                      write FILE instead of requirements.lock
# pip, not uv: it honours this machine's pip configuration (indexes, find-links, constraints). The lock is read
# as a constraints file (README command 1: pip install -c requirements.lock -e '.[test]').
set -euo pipefail
cd "$(dirname "$0")/.."
from="" out="requirements.lock"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="${2:?--from needs a venv folder}"; shift 2 ;;
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    *) echo "scripts/lock.sh: unknown argument '$1'; use [--from VENV] [--out FILE]" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$from" ]; then
  echo "lock: installing pas[test] unpinned into a fresh venv ($work/venv)" >&2
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q -e '.[test]'
  from="$work/venv"
fi
[ -x "$from/bin/pip" ] || { echo "scripts/lock.sh: $from is not a venv (no bin/pip)" >&2; exit 2; }
"$from/bin/pip" check >&2

# --all keeps setuptools (torch requires it at run time); pip itself and pas are not dependencies.
"$from/bin/pip" freeze --all --exclude-editable | grep -v -i -E '^(pip|pas)==' > "$work/pins"
if grep -v -E '^[A-Za-z0-9._-]+==[^ ;@]+$' "$work/pins" >&2; then
  echo "scripts/lock.sh: the lines above are not plain name==version pins; install those from a registry" >&2
  exit 1
fi
python=$("$from/bin/python" -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')
{
  echo "# Every distribution pas[test] installs, pinned: used as pip constraints by README command 1,"
  echo "#   pip install -c requirements.lock -e '.[test]'"
  echo "# Made by scripts/lock.sh with Python $python; refresh it with scripts/lock.sh (then recommit the results)."
  cat "$work/pins"
} > "$work/lock"
mv "$work/lock" "$out.tmp" && mv "$out.tmp" "$out"
# the locked timm's architecture names, read by config checks that must not import timm (pas plan)
(cd src && "$from/bin/python" -m pas.models.timm_archs) >&2
echo "lock: $(wc -l < "$work/pins") pins written to $out" >&2
