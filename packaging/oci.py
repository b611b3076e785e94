#!/usr/bin/env python3
"""`make oci`: keygate's filter as two OCI image layouts, written by hand (no Docker engine,
no registry): the blobs, each image's config and manifest, and the layout's index.json.

    target/oci/keygate-image   a Docker/OCI image: one layer (tar.gz) holding /plugin.wasm,
                               what `FROM scratch; COPY keygate.wasm ./plugin.wasm` builds.
                               Istio's WasmPlugin and Envoy Gateway's `type: Image` read it.
    target/oci/keygate-wasm    the Wasm OCI artifact: config media type
                               application/vnd.module.wasm.config.v1+json, one layer of media
                               type application/vnd.module.wasm.content.layer.v1+wasm that is
                               the raw module, so the layer's digest is sha256(keygate.wasm).

Each layout tags its one manifest with the version (`--tag`, default the workspace's
version from Cargo.toml): `skopeo inspect oci:target/oci/keygate-wasm:0.1.0`, and
`skopeo copy oci:target/oci/keygate-wasm:0.1.0 docker://registry.example.com/keygate/keygate-wasm:0.1.0`.

The output is reproducible: the same module gives the same digests (tar entries and gzip
header dated 0, owner 0; no creation time in the configs).

    packaging/oci.py [--wasm target/wasm32-wasip1/release/keygate.wasm] [--out target/oci] [--tag VERSION]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"

SOURCE = "https://github.com/keygate/keygate"


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("[workspace.package]", 1)[-1]
    match = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    if not match:
        sys.exit("oci.py: no version in Cargo.toml's [workspace.package]")
    return match.group(1)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """One OCI image layout directory (oci-layout, index.json, blobs/sha256/)."""

    def __init__(self, path):
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        self.path = path
        self.manifests = []
        with open(os.path.join(path, "oci-layout"), "w", encoding="utf-8") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob(self, data, media_type, annotations=None):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.path, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        desc = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc

    def image(self, tag, config, config_type, layers, annotations):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.blob(canonical(config), config_type),
            "layers": layers,
            "annotations": annotations,
        }
        desc = self.blob(canonical(manifest), OCI_MANIFEST)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(desc)
        return desc

    def close(self):
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.manifests}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical(index))


def plugin_tar(module):
    """A tar of one file, plugin.wasm, mode 0444, owner 0, dated 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(module)
        info.mode = 0o444
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", default=os.path.join(ROOT, "target/wasm32-wasip1/release/keygate.wasm"))
    parser.add_argument("--out", default=os.path.join(ROOT, "target/oci"))
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    tag = args.tag or workspace_version()
    with open(args.wasm, "rb") as f:
        module = f.read()
    module_sha = hashlib.sha256(module).hexdigest()
    annotations = {
        "org.opencontainers.image.title": "keygate",
        "org.opencontainers.image.description": "keygate: API-key authentication, a proxy-wasm filter for Envoy",
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "io.keygate.module.sha256": module_sha,
    }

    # (a) A Docker/OCI image: one tar.gz layer with /plugin.wasm.
    image = Layout(os.path.join(args.out, "keygate-image"))
    tar = plugin_tar(module)
    layer = image.blob(gzip_bytes(tar), OCI_LAYER_TGZ)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.version": tag, "io.keygate.module.sha256": module_sha}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
        "history": [{"created_by": "COPY keygate.wasm ./plugin.wasm", "created": "1970-01-01T00:00:00Z"}],
    }
    desc_image = image.image(tag, config, OCI_CONFIG, [layer], annotations)
    image.close()

    # (b) The Wasm OCI artifact: the raw module as its one layer.
    artifact = Layout(os.path.join(args.out, "keygate-wasm"))
    layer = artifact.blob(module, WASM_LAYER, {"org.opencontainers.image.title": "plugin.wasm"})
    assert layer["digest"] == f"sha256:{module_sha}"
    wasm_config = {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"], "version": tag}
    desc_wasm = artifact.image(tag, wasm_config, WASM_CONFIG, [layer], annotations)
    artifact.close()

    print(f"keygate.wasm      sha256:{module_sha} ({len(module)} bytes)")
    print(f"{os.path.relpath(image.path, ROOT)}:{tag}     manifest {desc_image['digest']}")
    print(f"{os.path.relpath(artifact.path, ROOT)}:{tag}      manifest {desc_wasm['digest']}")


if __name__ == "__main__":
    main()
