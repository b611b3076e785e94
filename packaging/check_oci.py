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
- the README's push, `skopeo copy oci:... docker://...`, into a throwaway local registry
  (Debian's docker-registry, when installed: `make oci-tools` installs it): the manifest
  digest survives the push, and the blob served at the module's digest is the module;
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
from checklib import Refused, ok, refused, scratch  # noqa: E402
from checklib import passed as checks  # noqa: E402

TMP = scratch("check-oci")


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


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_push(artifact, image, tag, module):
    """skopeo copy both layouts into a local registry, read them back over HTTP."""
    import time
    import urllib.request

    port = free_port()
    root = os.path.join(TMP, "registry")
    os.makedirs(root)
    config = os.path.join(root, "config.yml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v2/"
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        pushed = {}
        for layout in (artifact, image):
            name = os.path.basename(layout)
            remote = f"docker://127.0.0.1:{port}/keygate/{name}:{tag}"
            skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", remote)
            local = hashlib.sha256(skopeo("inspect", "--raw", f"oci:{layout}:{tag}").encode()).hexdigest()
            served = hashlib.sha256(skopeo("inspect", "--raw", "--tls-verify=false", remote).encode()).hexdigest()
            if local != served:
                raise Refused(f"{remote}: manifest sha256:{served}, the layout's is sha256:{local}")
            pushed[name] = served
        digest = hashlib.sha256(module).hexdigest()
        with urllib.request.urlopen(f"{base}keygate/keygate-wasm/blobs/sha256:{digest}", timeout=5) as r:
            if hashlib.sha256(r.read()).hexdigest() != digest:
                raise Refused("the registry's blob at the module's digest is not the module")
        return pushed
    finally:
        proc.terminate()
        proc.wait(10)


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
        if shutil.which("docker-registry"):
            pushed = check_push(artifact, image, tag, module)
            ok(
                "skopeo copy oci:... docker://127.0.0.1:PORT/keygate/...: manifests kept "
                + ", ".join(f"{n} sha256:{d[:12]}…" for n, d in sorted(pushed.items()))
                + "; the registry serves the module at its digest"
            )
        else:
            print("  --  no docker-registry: the push to a local registry is not checked (apt-get install docker-registry)")
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
