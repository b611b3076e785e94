#!/usr/bin/env bash
# `make dist`: a release in dist/ (README "Versioning and upgrades").
#
#   dist/VERSION                              the version (Cargo.toml)
#   dist/keygate.wasm, keygate.wasm.sha256    the filter (make wasm) and its sha256sum line
#   dist/keygate-x86_64-linux-musl            the keygate CLI and key service, static (musl)
#   dist/oci/keygate-wasm, dist/oci/keygate-image   the OCI layouts (make oci), tagged VERSION
#   dist/manifests/keygate-OVERLAY.yaml       `kubectl kustomize envoy/k8s/overlays/OVERLAY`
#   dist/SHA256SUMS                           sha256sum of every file above (not the layouts,
#                                             whose blobs are named by their digests)
#
# Run by the Makefile after `make wasm oci` and the musl build (MUSL_BIN); the layouts are
# checked again here with packaging/check_oci.py.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(python3 -c 'import sys; sys.path.insert(0, "packaging"); import oci; print(oci.workspace_version())')
WASM=${WASM:-target/wasm32-wasip1/release/keygate.wasm}
MUSL_BIN=${MUSL_BIN:-target/x86_64-unknown-linux-musl/release/keygate}
KUSTOMIZE=${KUSTOMIZE:-kubectl kustomize}
DIST=${DIST:-dist}

rm -rf "$DIST"
mkdir -p "$DIST/manifests"
echo "$VERSION" > "$DIST/VERSION"
install -m 0644 "$WASM" "$DIST/keygate.wasm"
(cd "$DIST" && sha256sum keygate.wasm > keygate.wasm.sha256)

if [ -x "$MUSL_BIN" ]; then
  if file "$MUSL_BIN" | grep -q 'statically linked\|static-pie linked'; then
    cp "$MUSL_BIN" "$DIST/keygate-x86_64-linux-musl"
    strip "$DIST/keygate-x86_64-linux-musl" 2>/dev/null || true
  else
    echo "dist: $MUSL_BIN is not statically linked: $(file -b "$MUSL_BIN")" >&2
    exit 1
  fi
else
  echo "dist: no static keygate binary ($MUSL_BIN); see the Makefile's dist-musl" >&2
  exit 1
fi

cp -r target/oci "$DIST/oci"
python3 packaging/check_oci.py --wasm "$DIST/keygate.wasm" --oci "$DIST/oci" --tag "$VERSION" >/dev/null

for overlay in envoy istio envoy-gateway keyservice-postgres; do
  {
    echo "# keygate $VERSION: kubectl kustomize envoy/k8s/overlays/$overlay (README \"Kustomize\")"
    $KUSTOMIZE "envoy/k8s/overlays/$overlay"
  } > "$DIST/manifests/keygate-$overlay.yaml"
done

(cd "$DIST" && find . -type f ! -path './oci/*' ! -name SHA256SUMS | sed 's|^\./||' | sort | xargs sha256sum > SHA256SUMS)
(cd "$DIST" && sha256sum --check --quiet SHA256SUMS)
echo "dist/ (keygate $VERSION):"
(cd "$DIST" && cat SHA256SUMS && echo "oci/keygate-wasm:$VERSION oci/keygate-image:$VERSION (skopeo inspect oci:dist/oci/keygate-wasm:$VERSION)")
