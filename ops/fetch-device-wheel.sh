#!/bin/sh
# fetch-device-wheel.sh - the diffusers wheel the device check's diffusers side
# installs (tests/device/check.sh: the GPU machine has torch and transformers but
# no diffusers and no registry), pruned to what the benchmarks use so that it
# fits the device tool's 64 MiB beside the working tree: diffusers/pipelines keeps
# its own modules and the stable_diffusion, stable_diffusion_xl and controlnet
# pipelines (every other pipeline is imported lazily, by name, and never named by
# tests/device/*.py). RECORD is rewritten for the files kept.
#     sh ops/fetch-device-wheel.sh      -> .whl/diffusers-0.37.1-py3-none-any.whl
set -e
cd "$(dirname "$0")/.."
VERSION=0.37.1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python3 -m pip download -q --no-deps -d "$W/dl" "diffusers==$VERSION"
mkdir "$W/x"
(cd "$W/x" && python3 -m zipfile -e "$W/dl/diffusers-$VERSION-py3-none-any.whl" .)
for d in "$W"/x/diffusers/pipelines/*/; do
    case "$(basename "$d")" in stable_diffusion | stable_diffusion_xl | controlnet) ;; *) rm -rf "$d" ;; esac
done
python3 - "$W/x" "diffusers-$VERSION.dist-info" <<'PY'
import base64, hashlib, os, sys
root, info = sys.argv[1], sys.argv[2]
lines = []
for dirpath, _, files in os.walk(root):
    for f in sorted(files):
        path = os.path.relpath(os.path.join(dirpath, f), root)
        if path == info + "/RECORD":
            continue
        data = open(os.path.join(root, path), "rb").read()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append("%s,sha256=%s,%d" % (path, digest, len(data)))
lines.append(info + "/RECORD,,")
open(os.path.join(root, info, "RECORD"), "w").write("\n".join(lines) + "\n")
PY
mkdir -p .whl
rm -f .whl/diffusers-*.whl
(cd "$W/x" && python3 -c 'import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED, compresslevel=9)
for d, _, fs in os.walk("."):
    for f in fs:
        z.write(os.path.join(d, f), os.path.relpath(os.path.join(d, f), "."))
z.close()' "$OLDPWD/.whl/diffusers-$VERSION-py3-none-any.whl")
ls -l .whl/
