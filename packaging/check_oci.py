#!/usr/bin/env python3
"""`make check-oci` (in `make test`): the two layouts `make oci` wrote, read back with skopeo.

- the Wasm artifact (target/oci/keygate-wasm): `skopeo inspect --raw` shows config media
  type application/vnd.module.wasm.config.v1+json and one layer of media type
  application/vnd.module.wasm.content.layer.v1+wasm whose digest and size are keygate.wasm's
  (sha256sum of the module this build made);
- the image (target/oci/keygate-image): `skopeo inspect` shows one layer; that layer, a
  tar+gzip, holds exactly plugin.wasm, byte for byte the module;
- `skopeo copy oci:... dir:...` of each, which reads every blob and checks its digest (what a
  `skopeo copy ... docker://` push does);
- and that these checks refuse broken copies: a layout whose module blob was altered, and a
  layout made from another module.

    packaging/check_oci.py [--wasm ...] [--oci target/oci] [--tag VERSION]
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402

TMP = tempfile.mkdtemp(prefix="keygate-check-oci-")
checks = []


class Refused(Exception):
    pass


def ok(what):
    checks.append(what)
    print(f"  ok  {what}")


def skopeo(*args):
    run = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    if run.returncode != 0:
        err = run.stderr.strip()
        err = err.split('msg="', 1)[1].rstrip('"') if 'msg="' in err else err
        raise Refused(f"skopeo {args[0]} {args[-2] if args[0] == 'copy' else args[-1]}: {err}")
    return run.stdout


def check_artifact(layout, tag, module):
    """The Wasm OCI artifact: its layer is the raw module."""
    ref = f"oci:{layout}:{tag}"
    manifest = json.loads(skopeo("inspect", "--raw", ref))
    if manifest["config"]["mediaType"] != oci.WASM_CONFIG:
        raise Refused(f"{ref}: config media type {manifest['config']['mediaType']}")
    layers = manifest["layers"]
    if len(layers) != 1 or layers[0]["mediaType"] != oci.WASM_LAYER:
        raise Refused(f"{ref}: layers {[(l['mediaType']) for l in layers]}, not one {oci.WASM_LAYER}")
    want = "sha256:" + hashlib.sha256(module).hexdigest()
    if layers[0]["digest"] != want or layers[0]["size"] != len(module):
        raise Refused(f"{ref}: layer {layers[0]['digest']} ({layers[0]['size']} bytes), keygate.wasm is {want} ({len(module)} bytes)")
    json.loads(skopeo("inspect", "--config", "--raw", ref))
    copy_out(ref)
    return layers[0]["digest"]


def check_image(layout, tag, module):
    """The image: one tar.gz layer holding plugin.wasm, the module."""
    ref = f"oci:{layout}:{tag}"
    info = json.loads(skopeo("inspect", ref))
    if len(info["Layers"]) != 1:
        raise Refused(f"{ref}: {len(info['Layers'])} layers, not 1")
    manifest = json.loads(skopeo("inspect", "--raw", ref))
    if manifest["layers"][0]["mediaType"] != oci.OCI_LAYER_TGZ:
        raise Refused(f"{ref}: layer media type {manifest['layers'][0]['mediaType']}")
    out = copy_out(ref)
    digest = info["Layers"][0]
    with tarfile.open(os.path.join(out, digest.split(":")[1]), "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        if names != ["plugin.wasm"]:
            raise Refused(f"{ref}: the layer holds {names}, not [plugin.wasm]")
        data = tar.extractfile(members[0]).read()
    if data != module:
        raise Refused(f"{ref}: plugin.wasm is sha256:{hashlib.sha256(data).hexdigest()}, not keygate.wasm")
    return digest


def copy_out(ref):
    """skopeo copy to a dir: destination, checking every blob's digest on the way."""
    out = tempfile.mkdtemp(dir=TMP)
    os.rmdir(out)
    skopeo("copy", "--quiet", ref, f"dir:{out}")
    return out


def refused(what, check, *args):
    try:
        check(*args)
    except Refused as e:
        ok(f"refused: {what} ({str(e).splitlines()[-1][:150]})")
        return
    print(f"FAIL  refusal: {what}: the broken copy was accepted")
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wasm", default=os.path.join(oci.ROOT, "target/wasm32-wasip1/release/keygate.wasm"))
    parser.add_argument("--oci", default=os.path.join(oci.ROOT, "target/oci"))
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    tag = args.tag or oci.workspace_version()
    if not shutil.which("skopeo"):
        sys.exit("check_oci.py: no skopeo (apt-get install skopeo; `make oci-tools`)")
    with open(args.wasm, "rb") as f:
        module = f.read()
    print(f"OCI layouts ({os.path.relpath(args.oci, oci.ROOT)}/, tag {tag}); keygate.wasm sha256:{hashlib.sha256(module).hexdigest()}")
    artifact = os.path.join(args.oci, "keygate-wasm")
    image = os.path.join(args.oci, "keygate-image")
    try:
        digest = check_artifact(artifact, tag, module)
        ok(f"oci:{os.path.relpath(artifact, oci.ROOT)}:{tag}: wasm config, one wasm layer {digest} = sha256(keygate.wasm); skopeo copy checks every blob")
        digest = check_image(image, tag, module)
        ok(f"oci:{os.path.relpath(image, oci.ROOT)}:{tag}: one tar+gzip layer {digest} holding only plugin.wasm = keygate.wasm; skopeo copy checks every blob")
    except Refused as e:
        print(f"FAIL  {e}")
        sys.exit(1)

    # Broken copies. (1) The module blob altered in place: skopeo's digest check refuses it.
    broken = os.path.join(TMP, "altered")
    shutil.copytree(args.oci, broken)
    blob = os.path.join(broken, "keygate-wasm", "blobs", "sha256", hashlib.sha256(module).hexdigest())
    with open(blob, "r+b") as f:
        f.seek(len(module) // 2)
        byte = f.read(1)
        f.seek(len(module) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    refused("the artifact with its module blob altered", check_artifact, os.path.join(broken, "keygate-wasm"), tag, module)
    # (2) Layouts made from another module (a stale build): the digests are not this module's.
    other = os.path.join(TMP, "other.wasm")
    with open(other, "wb") as f:
        f.write(module + b"\0")
    stale = os.path.join(TMP, "stale")
    subprocess.run([sys.executable, oci.__file__, "--wasm", other, "--out", stale, "--tag", tag], check=True, capture_output=True)
    refused("the artifact made from another module", check_artifact, os.path.join(stale, "keygate-wasm"), tag, module)
    refused("the image made from another module", check_image, os.path.join(stale, "keygate-image"), tag, module)
    shutil.rmtree(TMP, ignore_errors=True)
    print(f"check-oci: all {len(checks)} checks passed")


if __name__ == "__main__":
    main()
