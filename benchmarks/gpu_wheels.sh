#!/usr/bin/env bash
# Fetch, for the device machine's Python 3.12, the wheels its image lacks or has in other versions than ours
# (trl, datasets and their missing needs; transformers and peft at our versions), into .whl/,
# which git ignores through .git/info/exclude. Then, with the device tool: run `bash benchmarks/gpu_device.sh`
# with carry [".whl"]. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
wanted=()
for name in trl datasets dill multiprocess transformers peft; do
  wanted+=("$name==$(version "$name")")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "${wanted[@]}"
ls -1 .whl
du -sh .whl
