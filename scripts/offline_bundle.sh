#!/usr/bin/env bash
# Pack the Python packages distdl needs that a target machine's image lacks into one .tar.xz,
# for a machine with no network whose image already has torch but not Ray (a lent GPU box, an
# air-gapped node). There: unpack it and put it first on PYTHONPATH, with the repository:
#   mkdir -p /tmp/site && tar -xJf BUNDLE -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
#   usage: scripts/offline_bundle.sh HAVE.txt BUNDLE.tar.xz [PYTHON_VERSION]
# HAVE.txt: the distribution names the target already has, one per line or comma-separated
# (e.g. its `pip list --format freeze`); PYTHON_VERSION: the target's, default 3.12.
#
# What is packed: requirements.txt without torch/torchvision (the image's own are used) and the
# test and lint tools, every dependency resolved for that Python on manylinux x86-64, minus what
# HAVE.txt names. Ray's Java jars, RLlib and Ray LLM (unused by distdl, a third of Ray's size)
# and bytecode caches are dropped so that the bundle fits a 64 MiB transfer (~46 MiB for 3.12).
set -euo pipefail
HAVE=$1 BUNDLE=$2 PYVER=${3:-3.12}
PY=${PY:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

grep -v -E '^(torch|torchvision|pytest|ruff|schemathesis)\b' requirements.txt > "$WORK/wanted.txt"
"$PY" -m pip install -q --dry-run --ignore-installed --report "$WORK/resolved.json" --target "$WORK/none" \
  "${TARGET[@]}" -r "$WORK/wanted.txt"
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
