#!/usr/bin/env bash
# Prepares .whl/: the wheels that a GPU machine with torch, transformers, peft, pyarrow,
# numpy, pyyaml, tokenizers, safetensors, psutil, py-cpuinfo, msgpack and einops (but no
# DeepSpeed, pydantic or Ray, and no internet) needs to run benchmarks/gpu_proof.py:
#
#     benchmarks/gpu_wheels.sh                 # .whl/ for CPython 3.12, manylinux x86_64
#     PYTHON_VERSION=3.11 benchmarks/gpu_wheels.sh /tmp/whl311   # another Python (a local check)
#
# Versions are the ones installed here (this is the environment the kit is tested in).
# DeepSpeed publishes only a source archive: its wheel is built here with no compiled ops
# (DS_BUILD_OPS=0; the CPU Adam of optimizer offload compiles on first use with g++ and
# ninja, as it does here). The project itself goes in as a wheel too. At the end every
# wheel's runtime requirements are checked against the folder and the GPU image's list,
# and the folder's size against the 64 MiB the machine accepts. docs/gpu_proof.md has the
# command that installs the folder and runs the kit there.
set -euo pipefail

OUT=${1:-.whl}
PY=${PYTHON_VERSION:-3.12}
LIMIT_MB=64
cd "$(dirname "$0")/.."

version() { python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# Packages the GPU image lacks, beside DeepSpeed and the project: DeepSpeed's hjson and
# ninja (its op builds run `ninja`), pydantic with its core and helpers. typing_extensions
# is in the image (torch needs it) but pydantic_core needs a recent one.
BINARY=(pydantic_core ninja)
PURE=(hjson pydantic annotated_types typing_inspection typing_extensions)

rm -rf "$OUT" && mkdir -p "$OUT"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for name in "${BINARY[@]}" "${PURE[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
        "${platforms[@]}" -d "$OUT" "$name==$(version "$name")"
done

DS_VERSION=$(version deepspeed)
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "deepspeed==$DS_VERSION"
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
rm -rf build dsw_ray.egg-info  # setuptools' leftovers from the project's wheel

# Every requirement of every wheel (the project's own excepted: the kit needs none of its
# Ray-side ones) must be in the folder or in the GPU image.
python3 - "$OUT" "$PY" <<'EOF'
import email, pathlib, re, sys, zipfile

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

folder, python = pathlib.Path(sys.argv[1]), sys.argv[2]
IMAGE = {"torch", "transformers", "peft", "accelerate", "pyarrow", "numpy", "pyyaml", "tokenizers", "safetensors",
         "psutil", "py-cpuinfo", "msgpack", "einops", "packaging", "tqdm", "huggingface-hub", "regex", "typer",
         "filelock", "fsspec", "jinja2", "networkx", "sympy", "setuptools", "typing-extensions"}
environment = {**default_environment(), "python_version": python, "python_full_version": python + ".0",
               "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
wheels = {}
for wheel in sorted(folder.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        wheels[wheel.name] = email.message_from_bytes(archive.read(metadata))
present = {canonicalize_name(m["Name"]) for m in wheels.values()}
missing = []
for name, metadata in wheels.items():
    if canonicalize_name(metadata["Name"]) == "dsw-ray":
        continue
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        if canonicalize_name(requirement.name) not in present | IMAGE:
            missing.append(f"{name} needs {requirement}")
print("\n".join(f"  {name}" for name in wheels))
if missing:
    sys.exit("missing from the folder and the GPU image:\n  " + "\n  ".join(missing))
print(f"every requirement of {len(wheels)} wheels is in {folder} or in the GPU image")
EOF

size_kb=$(du -sk "$OUT" | cut -f1)
echo "$OUT: $((size_kb / 1024)) MiB of $LIMIT_MB"
if (( size_kb > LIMIT_MB * 1024 )); then
    echo "$OUT is larger than $LIMIT_MB MiB" >&2
    exit 1
fi
