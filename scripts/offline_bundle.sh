#!/usr/bin/env bash
# Pack the Python packages distdl needs that a target machine's image lacks into one .tar.xz,
# for a machine with no network whose image already has torch but not Ray (a lent GPU box, an
# air-gapped node). There: unpack it and put it first on PYTHONPATH, with the repository:
#   mkdir -p /tmp/site && tar -xJf BUNDLE -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
#   usage: scripts/offline_bundle.sh HAVE.txt BUNDLE.tar.xz [PYTHON_VERSION]   (env PY: the Python whose pip resolves)
# HAVE.txt: the distributions the target already has, one per line or comma-separated, best
# with versions: the target's `pip list --format freeze`; PYTHON_VERSION: the target's, default 3.12.
#
# What is packed: requirements.txt without torch/torchvision (the image's own are used) and the
# test and lint tools, every dependency resolved for that Python on manylinux x86-64, minus what
# HAVE.txt names. The versions HAVE.txt gives are held fixed while resolving, so that what is
# packed agrees with what the target keeps: resolved against the newest releases instead, Ray's
# grpcio-reflection 1.85.1 refused the target's grpcio 1.84.0 and `distdl serve` failed there.
# Ray's Java jars, RLlib and Ray LLM (unused by distdl, a third of Ray's size) and bytecode
# caches are dropped so that the bundle fits a 64 MiB transfer (~46 MiB for 3.12).
set -euo pipefail
HAVE=$1 BUNDLE=$2 PYVER=${3:-3.12}
# pip 23 checks a held version against its own Python (numpy 2.5 'requires a different Python:
# 3.11'), not PYTHON_VERSION; the project's .venv has a current pip
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

grep -v -E '^(torch|torchvision|pytest|ruff|schemathesis)\b' requirements.txt > "$WORK/wanted.txt"
# name==version entries of HAVE.txt, local labels (+cu130) dropped, become pip constraints
tr ',' '\n' < "$HAVE" | sed -n 's/^[[:space:]]*\([A-Za-z0-9._-]*==[^+[:space:]]*\).*/\1/p' > "$WORK/kept.txt"
[ -s "$WORK/kept.txt" ] || echo "warning: $HAVE gives no versions: the target's packages are assumed to be \
the newest releases, and what is packed may not work beside older ones" >&2
"$PY" -m pip install -q --dry-run --ignore-installed --report "$WORK/resolved.json" --target "$WORK/none" \
  "${TARGET[@]}" -r "$WORK/wanted.txt" -c "$WORK/kept.txt"
"$PY" - "$WORK/resolved.json" "$HAVE" > "$WORK/missing.txt" <<'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(re.split(r"[=<>\s]", n.strip())[0]) for n in re.split(r"[,\n]", open(sys.argv[2]).read()) if n.strip()}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if norm(meta["name"]) not in have:
        print(f"{meta['name']}=={meta['version']}")
EOF
echo "packing $(wc -l < "$WORK/missing.txt") distributions the target lacks: $(tr '\n' ' ' < "$WORK/missing.txt")"
"$PY" -m pip install -q --no-deps --target "$WORK/site" "${TARGET[@]}" -r "$WORK/missing.txt"
rm -rf "$WORK/site/ray/jars" "$WORK/site/ray/rllib" "$WORK/site/ray/llm" "$WORK/site/bin/py-spy"
find "$WORK/site" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$WORK/site" -cf - . | xz -T0 -6 > "$BUNDLE"
echo "wrote $BUNDLE ($(du -m "$BUNDLE" | cut -f1) MiB)"
