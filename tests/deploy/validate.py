"""`make validate-deploy`: every deployment target under envoy/ checked without a cluster or
a Docker engine, and every check shown able to fail on a broken copy.

- envoy/k8s/: a kustomize base (the key service) and six overlays (plain Envoy, Istio,
  Envoy Gateway, the native build, libkeygate_native.so, on Istio and on Envoy Gateway, and
  the key service as 3 replicas on PostgreSQL), each rendered with `kubectl kustomize`
  (every file must be named by a kustomization; every gateway overlay must deploy the base
  unchanged; keyservice-postgres changes the key service as keyservice_postgres() checks).
  In the renders: core kinds (Namespace, ConfigMap, Deployment, Service,
  PersistentVolumeClaim, PodDisruptionBudget) with kubernetes-validate in strict mode
  (unknown fields refused) for the oldest and newest Kubernetes versions named below;
  WasmPlugin, EnvoyExtensionPolicy, EnvoyProxy and HTTPRoute against the OpenAPI schemas kept
  in tests/schemas/ (see the README there: EnvoyProxy's is partial), also strict; Istio's
  EnvoyFilter, for which no schema is kept, field by field below, its patch by Envoy.
- keygate's configuration wherever a target carries it (WasmPlugin pluginConfig,
  EnvoyExtensionPolicy config, the EnvoyFilter's patch, the Envoy configs of the ConfigMap,
  the compose stack and the ECDS resource): `keygate check`, the filter's own parser.
- The native build's filter as Envoy takes it: the EnvoyFilter's patch value, and the
  EnvoyExtensionPolicy's dynamicModule entry with its EnvoyProxy's module path, each put in
  envoy/keygate-native.yaml's listener in place of its filter and run through
  `envoy --mode validate` loading this build's libkeygate_native.so; how the module reaches
  Envoy (the init container running envoy/Dockerfile.keygate-native's command, the shared
  volume, ENVOY_DYNAMIC_MODULES_SEARCH_PATH) followed from one object to the next.
- Envoy configs that only make sense in a container or a cluster (their module path is
  /etc/...), and the ECDS resource inlined into its listener: `envoy --mode validate` on a
  copy with the module path pointed at this build.
- envoy/docker-compose.yaml: `docker-compose config`, and that the Envoy config it mounts
  names the services, ports and paths the compose file defines; that the key service's
  command (envoy/Dockerfile.keygate-serve) finds its database on the volume and its
  certificates where the compose file binds them, and Envoy its client certificate.
- Certificates: made here with the README's openssl commands (never committed), so that
  `envoy --mode validate` loads the mTLS clusters' files.

Run from the repository root with the .venv python (PyYAML, jsonschema, kubernetes-validate).
Exits 1 on the first failing check, saying which.
"""

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "packaging"))
from checklib import fail, ok, passed, scratch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENVOY = os.environ.get("KEYGATE_ENVOY", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.environ.get(
    "KEYGATE_WASM", os.path.join(ROOT, "target/wasm32-wasip1/release/keygate.wasm")
)
KEYGATE = os.environ.get("KEYGATE_BIN", os.path.join(ROOT, "target/debug/keygate"))
NATIVE = os.environ.get("KEYGATE_NATIVE", os.path.join(ROOT, "target/debug/libkeygate_native.so"))
COMPOSE = shlex.split(os.environ.get("DOCKER_COMPOSE", "docker-compose"))

# Core kinds are checked against the oldest and the newest Kubernetes this targets.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

CRD_SCHEMAS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): "wasmplugin.extensions.istio.io.v1alpha1.yaml",
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): "envoyextensionpolicy.gateway.envoyproxy.io.v1alpha1.yaml",
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"): "envoyproxy.gateway.envoyproxy.io.v1alpha1.yaml",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute.gateway.networking.k8s.io.v1.json",
}

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NATIVE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
ENVOY_FILTER = ("networking.istio.io/v1alpha3", "EnvoyFilter")

TMP = scratch("validate-deploy")


def rel(path):
    return os.path.relpath(path, ROOT)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def scratch(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------------------
# Kubernetes objects


def strict(schema):
    """The schema as the API server applies it with strict field validation (kubectl's
    default): an object with declared properties accepts no others, unless the CRD keeps
    unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key == "enum" or key == "default" or key == "required":
            out[key] = value
        else:
            out[key] = strict(value)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def crd_validator(api_version, kind):
    schema = load_yaml(os.path.join(ROOT, "tests/schemas", CRD_SCHEMAS[(api_version, kind)]))
    schema = strict(schema)
    # What the API server checks itself on every object, whatever its schema says.
    schema.setdefault("properties", {})
    schema["properties"]["apiVersion"] = {"enum": [api_version]}
    schema["properties"]["kind"] = {"enum": [kind]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
            "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    # OpenAPI v3.0 schemas are JSON Schema draft 4 in what they validate.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


VALIDATORS = {}


def k8s_problems(doc):
    """What the API server would refuse in this object: a list of messages."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key == ENVOY_FILTER:
        return envoy_filter_problems(doc)
    if key in CRD_SCHEMAS:
        if key not in VALIDATORS:
            VALIDATORS[key] = crd_validator(*key)
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in VALIDATORS[key].iter_errors(doc)
        ]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "(root)"
            problems.append(f"kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(e.message)
    return problems


def envoy_filter_problems(doc):
    """No schema of Istio's EnvoyFilter is kept (tests/schemas/README.md): the fields
    keygate's EnvoyFilter uses, each checked for the value keygate needs (an HTTP filter
    inserted before the router of a sidecar's inbound or a gateway's listeners); anything
    else is refused here. The patch value itself is Envoy's to check (`envoy --mode validate`)."""
    problems = []

    def only(path, node, keys):
        if not isinstance(node, dict):
            problems.append(f"{path}: not an object")
            return {}
        problems.extend(f"{path}.{k}: not a field keygate's EnvoyFilter uses" for k in node if k not in keys)
        return node

    top = only("(root)", doc, {"apiVersion", "kind", "metadata", "spec"})
    metadata = only("metadata", top.get("metadata"), {"name", "namespace", "labels", "annotations"})
    if not isinstance(metadata.get("name"), str):
        problems.append("metadata.name: required")
    spec = only("spec", top.get("spec"), {"workloadSelector", "configPatches"})
    selector = only("spec.workloadSelector", spec.get("workloadSelector"), {"labels"})
    labels = selector.get("labels")
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        problems.append("spec.workloadSelector.labels: one label or more, string values")
    patches = spec.get("configPatches")
    if not isinstance(patches, list) or not patches:
        problems.append("spec.configPatches: a list of one patch or more")
        patches = []
    for i, entry in enumerate(patches):
        at = f"spec.configPatches.{i}"
        entry = only(at, entry, {"applyTo", "match", "patch"})
        if entry.get("applyTo") != "HTTP_FILTER":
            problems.append(f"{at}.applyTo: {entry.get('applyTo')!r}, not HTTP_FILTER")
        match = only(f"{at}.match", entry.get("match"), {"context", "listener"})
        if match.get("context") not in ("SIDECAR_INBOUND", "GATEWAY"):
            problems.append(f"{at}.match.context: {match.get('context')!r}, not SIDECAR_INBOUND or GATEWAY")
        listener = only(f"{at}.match.listener", match.get("listener"), {"filterChain"})
        chain = only(f"{at}.match.listener.filterChain", listener.get("filterChain"), {"filter"})
        network = only(f"{at}.match.listener.filterChain.filter", chain.get("filter"), {"name", "subFilter"})
        if network.get("name") != "envoy.filters.network.http_connection_manager":
            problems.append(f"{at}.match.listener.filterChain.filter.name: {network.get('name')!r}, not the HTTP connection manager")
        sub = only(f"{at}.match.listener.filterChain.filter.subFilter", network.get("subFilter"), {"name"})
        if sub.get("name") != "envoy.filters.http.router":
            problems.append(f"{at}.match.listener.filterChain.filter.subFilter.name: {sub.get('name')!r}, not envoy.filters.http.router")
        patch = only(f"{at}.patch", entry.get("patch"), {"operation", "value"})
        if patch.get("operation") != "INSERT_BEFORE":
            problems.append(f"{at}.patch.operation: {patch.get('operation')!r}, not INSERT_BEFORE (the router)")
        value = only(f"{at}.patch.value", patch.get("value"), {"name", "typed_config"})
        if value.get("name") != "envoy.filters.http.dynamic_modules":
            problems.append(f"{at}.patch.value.name: {value.get('name')!r}, not envoy.filters.http.dynamic_modules")
        if not isinstance(value.get("typed_config"), dict) or value["typed_config"].get("@type") != NATIVE_TYPE:
            problems.append(f"{at}.patch.value.typed_config: not a {NATIVE_TYPE}")
    return problems


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def refused_k8s(what, doc, expect):
    """A broken copy must be refused, with a message that names `expect`."""
    problems = k8s_problems(doc)
    if not problems:
        fail(f"refusal: {what}", "the broken copy was accepted")
    if not any(expect in p for p in problems):
        fail(f"refusal: {what}", f"refused, but not for {expect!r}: {problems}")
    ok(f"refused: {what}")


# ---------------------------------------------------------------------------------------
# keygate's configuration


def keygate_check(what, config):
    """`keygate check` on a plugin configuration (a JSON string or a parsed value)."""
    text = config if isinstance(config, str) else json.dumps(config, indent=1)
    path = scratch("keygate-config.json", text)
    run = subprocess.run([KEYGATE, "check", path], capture_output=True, text=True)
    return run.returncode, (run.stdout + run.stderr).replace(path, what)


def check_keygate(what, config):
    code, output = keygate_check(what, config)
    if code != 0:
        fail(f"{what}: keygate check", output)
    ok(f"{what}: keygate check: {output.strip().rsplit(': ok: ', 1)[-1]}")


def keygate_filters(envoy_config):
    """keygate's configuration strings in an Envoy config (any wasm filter rooted at keygate)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("@type") == WASM_TYPE and node.get("config", {}).get("root_id") == "keygate":
                found.append(node["config"]["configuration"]["value"])
            if node.get("@type") == NATIVE_TYPE and node.get("dynamic_module_config", {}).get("name") == "keygate_native":
                found.append(node["filter_config"]["value"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(envoy_config)
    return found


# ---------------------------------------------------------------------------------------
# Envoy


def envoy_validate(path, search_path=None):
    """`envoy --mode validate`; `search_path` is ENVOY_DYNAMIC_MODULES_SEARCH_PATH (unset if None)."""
    env = {k: v for k, v in os.environ.items() if k != "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"}
    if search_path is not None:
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = search_path
    run = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", path, "--log-level", "error"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    return run.returncode, run.stdout + run.stderr


def check_envoy(what, text, search_path=None):
    code, output = envoy_validate(scratch("envoy.yaml", text), search_path)
    if code != 0:
        fail(f"{what}: envoy --mode validate", output)
    ok(f"{what}: envoy --mode validate")


def with_module(text, container_path):
    if container_path not in text:
        fail(f"no {container_path} in the config")
    return text.replace(container_path, WASM)


# ---------------------------------------------------------------------------------------
# Certificates


CERTS = {}


def readme_openssl():
    """The openssl commands of README "docker-compose" (the ```sh block that runs
    `openssl req -x509`), run in a scratch directory: the files they made."""
    if "dir" in CERTS:
        return CERTS["dir"]
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start = readme.index("<!-- compose-certificates -->")
    block = readme[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    out = os.path.join(TMP, "tls")
    os.makedirs(out, exist_ok=True)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=out, capture_output=True, text=True)
    if run.returncode != 0:
        fail("README's openssl commands", run.stdout + run.stderr)
    files = sorted(os.listdir(out))
    for name in ["ca.crt", "envoy.crt", "envoy.key", "keyservice.crt", "keyservice.key"]:
        if name not in files:
            fail(f"README's openssl commands made no {name}", files)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "keyservice.crt", "envoy.crt"], cwd=out, capture_output=True, text=True
    )
    if verify.returncode != 0:
        fail("README's certificates: openssl verify", verify.stdout + verify.stderr)
    ok("README's openssl commands make a CA, the key service's and Envoy's certificates (openssl verify)")
    CERTS["dir"] = out
    return out


def envoy_tls_files():
    """Envoy's client certificate, its key and the CA, as both Envoy configs name them in
    their containers, and the scratch files that stand for them."""
    tls = readme_openssl()
    return {
        "/etc/envoy-tls/tls.crt": os.path.join(tls, "envoy.crt"),
        "/etc/envoy-tls/tls.key": os.path.join(tls, "envoy.key"),
        "/etc/envoy-tls/ca.crt": os.path.join(tls, "ca.crt"),
    }


def check_server_name(what, config):
    """The keyservice cluster's SNI and the name it checks are one, and the key service's
    certificate from the README's commands carries it."""
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "keyservice"]
    tls = cluster["transport_socket"]["typed_config"]
    names = [m["matcher"]["exact"] for m in tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]]
    if names != [tls["sni"]]:
        fail(f"{what}: keyservice cluster", f"SNI {tls['sni']} but checks {names}")
    run = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", os.path.join(readme_openssl(), "keyservice.crt")],
        capture_output=True,
        text=True,
    )
    if f"DNS:{tls['sni']}" not in run.stdout:
        fail(f"{what}: the README's key service certificate does not name {tls['sni']}", run.stdout + run.stderr)
    ok(f"{what}: keyservice cluster over mTLS, SNI {tls['sni']}, which the README's certificate names")


def with_certificates(text, paths):
    """`text` with each container path in `paths` replaced by the scratch file it names."""
    for container_path, local in paths.items():
        if container_path not in text:
            fail(f"no {container_path} in the config")
        text = text.replace(container_path, local)
    return text


# ---------------------------------------------------------------------------------------


# `kubectl kustomize` (kubectl embeds kustomize), or KUSTOMIZE='kustomize build'.
KUSTOMIZE = shlex.split(os.environ.get("KUSTOMIZE", "kubectl kustomize"))
OVERLAYS = ["envoy", "envoy-gateway", "envoy-gateway-native", "istio", "istio-native", "keyservice-postgres"]
# The overlays that add a gateway to the base's key service, unchanged.
GATEWAY_OVERLAYS = [o for o in OVERLAYS if o != "keyservice-postgres"]
# The overlays that load keygate.wasm; the two -native ones are checked by native_overlays().
WASM_OVERLAYS = ["envoy", "envoy-gateway", "istio"]


def kustomize(path):
    """`kubectl kustomize path`: (exit code, the objects or the error)."""
    run = subprocess.run([*KUSTOMIZE, path], capture_output=True, text=True)
    if run.returncode != 0:
        return run.returncode, run.stderr.strip()
    return 0, [d for d in yaml.safe_load_all(run.stdout) if d is not None]


def render(path):
    code, out = kustomize(path)
    if code != 0:
        fail(f"kubectl kustomize {rel(path)}", out)
    if not out:
        fail(f"kubectl kustomize {rel(path)}: no objects")
    return out


def k8s_tree_files(k8s):
    """Every YAML file under envoy/k8s/, relative to it."""
    found = []
    for dirpath, _, names in os.walk(k8s):
        found += [os.path.relpath(os.path.join(dirpath, n), k8s) for n in names if n.endswith(".yaml")]
    return sorted(found)


def kubernetes():
    print("Kubernetes manifests (envoy/k8s/: a kustomize base and overlays, each rendered with `kubectl kustomize`)")
    k8s = os.path.join(ROOT, "envoy/k8s")
    if sorted(os.listdir(os.path.join(k8s, "overlays"))) != OVERLAYS:
        fail("envoy/k8s/overlays/", f"{sorted(os.listdir(os.path.join(k8s, 'overlays')))}, not {OVERLAYS}: add them here")
    # Every file is a kustomization or a resource one names (none left out of every render).
    listed = set()
    for dirpath, _, names in os.walk(k8s):
        if "kustomization.yaml" in names:
            listed.add(os.path.relpath(os.path.join(dirpath, "kustomization.yaml"), k8s))
            for r in load_yaml(os.path.join(dirpath, "kustomization.yaml")).get("resources", []):
                if r.endswith(".yaml"):
                    listed.add(os.path.relpath(os.path.join(dirpath, r), k8s))
    if k8s_tree_files(k8s) != sorted(listed):
        fail("envoy/k8s/: files no kustomization names", sorted(set(k8s_tree_files(k8s)) - listed))
    rendered = {}
    seen = set()
    for name in OVERLAYS:
        docs = render(os.path.join(k8s, "overlays", name))
        for doc in docs:
            key = json.dumps(doc, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            problems = k8s_problems(doc)
            if problems:
                fail(f"overlays/{name}: {name_of(doc)}", "\n".join(problems))
            key = (doc["apiVersion"], doc["kind"])
            if key == ENVOY_FILTER:
                schema = "field by field: no schema kept"
            elif key == ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"):
                schema = "partial schema from the Go types"
            elif key in CRD_SCHEMAS:
                schema = "CRD schema"
            else:
                schema = "kubernetes-validate --strict"
            ok(f"kubectl kustomize overlays/{name}: {name_of(doc)} ({schema})")
        rendered[name] = docs
    base = render(os.path.join(k8s, "base"))
    for name in GATEWAY_OVERLAYS:
        missing = [name_of(d) for d in base if d not in rendered[name]]
        if missing:
            fail(f"overlays/{name} does not deploy the base unchanged", missing)
    ok(f"every overlay deploys the base ({', '.join(name_of(d) for d in base)}) unchanged")
    objects = {}
    for name in WASM_OVERLAYS:
        for doc in rendered[name]:
            objects[doc["kind"]] = doc
    envoy_docs = rendered["envoy"]

    wasmplugin = objects["WasmPlugin"]
    spec = wasmplugin["spec"]
    for field, value in [("phase", "AUTHN"), ("failStrategy", "FAIL_CLOSE"), ("pluginName", "keygate")]:
        if spec.get(field) != value:
            fail(f"WasmPlugin: spec.{field} is {spec.get(field)!r}, not {value!r}")
    if not spec.get("match"):
        fail("WasmPlugin: no spec.match")
    check_keygate("WasmPlugin keygate: pluginConfig", spec["pluginConfig"])

    policy = objects["EnvoyExtensionPolicy"]
    route = objects["HTTPRoute"]
    wasm = policy["spec"]["wasm"]
    if [w.get("rootID") for w in wasm] != ["keygate"] or wasm[0].get("failOpen") is not False:
        fail("EnvoyExtensionPolicy: one wasm entry, rootID keygate, failOpen false")
    if {"kind": "HTTPRoute", "name": route["metadata"]["name"]}.items() > policy["spec"]["targetRefs"][0].items():
        fail("EnvoyExtensionPolicy: does not target the HTTPRoute beside it")
    check_keygate("EnvoyExtensionPolicy keygate: config", wasm[0]["config"])

    # Both pull the image `make oci` writes, at this version, from where README "OCI images
    # of the module" pushes it.
    version = cargo_version()
    image = f"registry.example.com/keygate/keygate-wasm:{version}"
    if spec["url"] != f"oci://{image}":
        fail("WasmPlugin: url", f"{spec['url']}, not oci://{image} (README's skopeo copy)")
    code = wasm[0]["code"]
    if code.get("type") != "Image" or code.get("image", {}).get("url") != image:
        fail("EnvoyExtensionPolicy: code", f"{code}, not type Image from {image}")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        if f"docker://{image}" not in f.read():
            fail(f"README pushes no docker://{image}")
    ok(f"WasmPlugin and EnvoyExtensionPolicy pull {image}, the OCI image README's skopeo copy pushes")

    configmap = objects["ConfigMap"]
    envoy_text = configmap["data"]["envoy.yaml"]
    (plugin,) = keygate_filters(yaml.safe_load(envoy_text))
    check_keygate("ConfigMap keygate-envoy: keygate's configuration", plugin)
    check_server_name("ConfigMap keygate-envoy", yaml.safe_load(envoy_text))
    check_envoy(
        "ConfigMap keygate-envoy: envoy.yaml",
        with_certificates(with_module(envoy_text, "/etc/keygate/keygate.wasm"), envoy_tls_files()),
    )
    deployments = {
        d["metadata"]["name"]: d
        for d in envoy_docs
        if d["kind"] == "Deployment"
    }
    envoy_pod = deployments["keygate-envoy"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in envoy_pod["containers"][0]["volumeMounts"]}
    if not {"/etc/envoy", "/etc/keygate", "/etc/envoy-tls"} <= mounts:
        fail(
            "Deployment keygate-envoy: mounts",
            f"{mounts}: the config, the module and the client certificate must be at /etc/envoy, /etc/keygate and /etc/envoy-tls",
        )
    check_projected_tls("Deployment keygate-envoy", envoy_pod, "/etc/envoy-tls", "keygate-envoy-tls")
    ok("Deployment keygate-envoy mounts what envoy.yaml reads")
    problems = endpoint_problems(envoy_docs)
    if problems:
        fail("overlays/envoy: Envoy's clusters", "\n".join(problems))
    ok("overlays/envoy: each of Envoy's clusters calls a Service of the render (name, namespace, port)")

    # The key service: the image's command (the Dockerfile's CMD) reads its database on the
    # claim and its certificate, key and client CA from one projected directory.
    claims = {d["metadata"]["name"]: d for d in envoy_docs if d["kind"] == "PersistentVolumeClaim"}
    keyservice = deployments["keygate-keyservice"]
    if keyservice["spec"].get("replicas") != 1 or keyservice["spec"].get("strategy", {}).get("type") != "Recreate":
        fail("Deployment keygate-keyservice", "one replica (SQLite) with the Recreate strategy")
    pod = keyservice["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if "command" in container or "args" in container:
        fail("Deployment keygate-keyservice: runs the image's command, checked below against the Dockerfile")
    flags = dockerfile_flags()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data = volumes.get(mounts.get(os.path.dirname(flags["--db"])), {})
    claim = data.get("persistentVolumeClaim", {}).get("claimName")
    if claim not in claims or claims[claim]["spec"]["accessModes"] != ["ReadWriteOnce"]:
        fail("Deployment keygate-keyservice", f"--db {flags['--db']} is not on a ReadWriteOnce claim of this file: {data}")
    tls_dir = os.path.dirname(flags["--tls-cert"])
    if {os.path.dirname(flags[f]) for f in ("--tls-key", "--client-ca")} != {tls_dir}:
        fail("envoy/Dockerfile.keygate-serve: the certificate, key and CA are not in one directory", flags)
    check_projected_tls("Deployment keygate-keyservice", pod, tls_dir, "keygate-keyservice-tls")
    ports = {p["containerPort"] for p in container["ports"]}
    if int(flags["--listen"].rsplit(":", 1)[1]) not in ports:
        fail("Deployment keygate-keyservice: ports", f"{ports} vs --listen {flags['--listen']}")
    for probe in ("readinessProbe", "livenessProbe"):
        if container[probe]["httpGet"].get("scheme") != "HTTPS":
            fail(f"Deployment keygate-keyservice: {probe} is not over HTTPS")
    ok("Deployment keygate-keyservice: one replica, Recreate, the database on a claim, the TLS Secret and the CA where the image's command reads them")

    print("Kubernetes checks refuse broken copies")
    broken = copy.deepcopy(wasmplugin)
    broken["spec"]["failStrategy"] = "FAIL_CLOSED"
    refused_k8s("WasmPlugin with failStrategy FAIL_CLOSED (Envoy's word, not Istio's)", broken, "FAIL_CLOSED")
    broken = copy.deepcopy(wasmplugin)
    broken["spec"]["pluginConfg"] = broken["spec"].pop("pluginConfig")
    refused_k8s("WasmPlugin with a misspelled field (pluginConfg)", broken, "pluginConfg")
    broken = copy.deepcopy(policy)
    broken["spec"]["wasm"][0]["code"]["type"] = "Url"
    refused_k8s("EnvoyExtensionPolicy with code.type Url", broken, "Url")
    broken = copy.deepcopy(policy)
    del broken["spec"]["wasm"][0]["code"]
    refused_k8s("EnvoyExtensionPolicy with no wasm code", broken, "'code' is a required property")
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
    refused_k8s("HTTPRoute with path type Prefix", broken, "Prefix")
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["port"] = 70000
    refused_k8s("HTTPRoute with backend port 70000", broken, "70000")
    broken = copy.deepcopy(deployments["keygate-envoy"])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "10000"
    refused_k8s("Deployment with a containerPort given as a string", broken, "'10000' is not of type 'integer'")
    broken = copy.deepcopy(deployments["keygate-envoy"])
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    refused_k8s("Deployment with a misspelled field (volumeMount)", broken, "volumeMount")
    broken = copy.deepcopy(claims["keygate-keyservice-data"])
    broken["spec"]["accessModes"] = "ReadWriteOnce"
    refused_k8s("PersistentVolumeClaim with accessModes not a list", broken, "'ReadWriteOnce' is not of type 'array'")
    broken = copy.deepcopy(keyservice)
    broken["spec"]["strategy"]["recreate"] = {}
    refused_k8s("Deployment with a misspelled strategy field (recreate)", broken, "recreate")
    broken = copy.deepcopy(configmap)
    broken["data"]["envoy.yaml"] = 1
    refused_k8s("ConfigMap with a number for data", broken, "1 is not of type 'string'")

    print("kustomize renders refuse broken copies")
    tree = os.path.join(TMP, "k8s-broken")
    shutil.copytree(k8s, tree)
    with open(os.path.join(tree, "overlays/istio/kustomization.yaml"), "a", encoding="utf-8") as f:
        f.write(
            "patches:\n- target: {kind: WasmPlugin, name: keygate}\n"
            "  patch: |-\n    - op: replace\n      path: /spec/failStrategy\n      value: FAIL_CLOSED\n"
        )
    (broken,) = [d for d in render(os.path.join(tree, "overlays/istio")) if d["kind"] == "WasmPlugin"]
    refused_k8s("overlays/istio with a patch setting failStrategy FAIL_CLOSED, rendered", broken, "FAIL_CLOSED")
    with open(os.path.join(tree, "overlays/envoy/kustomization.yaml"), "a", encoding="utf-8") as f:
        f.write("- keyservice.yaml\n")
    code, out = kustomize(os.path.join(tree, "overlays/envoy"))
    if code == 0 or "keyservice.yaml" not in out:
        fail("refusal: overlays/envoy naming a missing resource", out)
    ok(f"refused: overlays/envoy naming a resource that is not there (kubectl kustomize: {out.splitlines()[-1][-90:]})")
    shutil.copy(os.path.join(k8s, "overlays/envoy/kustomization.yaml"), os.path.join(tree, "overlays/envoy/kustomization.yaml"))
    with open(os.path.join(tree, "base/kustomization.yaml"), "a", encoding="utf-8") as f:
        f.write("namePrefix: kg-\n")
    problem = endpoint_problems(render(os.path.join(tree, "overlays/envoy")))
    if not problem:
        fail("refusal: a base renamed by namePrefix", "the Envoy config's clusters still found their Services")
    ok(f"refused: a base renamed by namePrefix, rendered ({problem[0]})")

    print("keygate check refuses broken copies")
    broken = copy.deepcopy(spec["pluginConfig"])
    broken["keys"][0]["hash"] = broken["keys"][0]["hash"][:-1]
    code, output = keygate_check("WasmPlugin pluginConfig", broken)
    if code == 0 or "keys[0].hash" not in output:
        fail("refusal: pluginConfig with a 63-character hash", output)
    ok("refused: pluginConfig with a 63-character hash (keys[0].hash)")
    broken = copy.deepcopy(wasm[0]["config"])
    broken["rules"][0] = {"path_prefix": "/healthz"}
    code, output = keygate_check("EnvoyExtensionPolicy config", broken)
    if code == 0 or "rules[0]" not in output:
        fail("refusal: config with a rule neither public nor scoped", output)
    ok("refused: config with a rule neither public nor scoped (rules[0])")

    native_overlays(rendered)
    keyservice_postgres(rendered["keyservice-postgres"], base)


# ---------------------------------------------------------------------------------------
# The key service as replicas on PostgreSQL (overlays/keyservice-postgres)


def postgres_problems(docs):
    """What makes this render not 3 replicas of `keygate serve` sharing the PostgreSQL that
    the Secret's DSN names: a list of messages."""
    problems = []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    if ("PersistentVolumeClaim", "keygate-keyservice-data") in kinds:
        problems.append("the SQLite claim is still deployed")
    deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "keygate-keyservice"]
    if len(deployments) != 1:
        return problems + ["no Deployment keygate-keyservice"]
    spec = deployments[0]["spec"]
    if spec.get("replicas") != 3:
        problems.append(f"replicas: {spec.get('replicas')}, not 3")
    if spec.get("strategy", {}).get("type") != "RollingUpdate":
        problems.append(f"strategy: {spec.get('strategy')}: replicas on one database roll one at a time")
    pod = spec["template"]["spec"]
    if any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
        problems.append("a pod still mounts a claim")
    (container,) = [c for c in pod["containers"] if c["name"] == "keygate-serve"]
    args = container.get("args", [])
    if not args or args[0] != "serve" or "--db" in args:
        problems.append(f"args {args}: `serve` with --db from KEYGATE_DB (no DSN on a command line)")
    for flag in ("--tls-cert", "--tls-key", "--client-ca"):
        if flag not in args:
            problems.append(f"args {args}: {flag} is gone")
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get("KEYGATE_DB", {}).get("valueFrom", {}).get("secretKeyRef", {})
    # Messages never repeat a DSN: it may hold a password.
    if "value" in env.get("KEYGATE_DB", {}) or any(d["kind"] == "Secret" for d in docs):
        problems.append("a DSN (with its password) in the manifests: the Secret is made by the operator")
    if ref != {"name": "keygate-keyservice-postgres", "key": "dsn"}:
        problems.append("KEYGATE_DB is not from Secret keygate-keyservice-postgres, key dsn")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("no /readyz readiness probe: a replica cut off from PostgreSQL would keep its traffic")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if not pdbs or pdbs[0]["spec"].get("selector", {}).get("matchLabels") != spec["selector"]["matchLabels"]:
        problems.append("no PodDisruptionBudget over the key service's pods")
    return problems


def keyservice_postgres(docs, base):
    print("The key service on PostgreSQL (overlays/keyservice-postgres)")
    problems = postgres_problems(docs)
    if problems:
        fail("overlays/keyservice-postgres", "\n".join(problems))
    ok("overlays/keyservice-postgres: 3 replicas rolled one at a time, no claim, --db from Secret keygate-keyservice-postgres (key dsn), /readyz, a PodDisruptionBudget")
    kept = [name_of(d) for d in base if d["kind"] in ("Namespace", "Service") and d not in docs]
    if kept:
        fail("overlays/keyservice-postgres changes the base's Namespace or Service", kept)
    ok("overlays/keyservice-postgres keeps the base's Namespace and Service (gateways call the same name)")
    # The check refuses the base itself (SQLite, one pod) and a DSN written into the manifest.
    if not postgres_problems(base):
        fail("refusal: the base's single SQLite pod passed the PostgreSQL checks")
    ok(f"refused: the base as replicas on PostgreSQL ({postgres_problems(base)[0]})")
    broken = copy.deepcopy(docs)
    for d in broken:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["env"] = [{"name": "KEYGATE_DB", "value": "postgres://keygate:hunter2@db/keygate"}]
    problem = postgres_problems(broken)
    if not problem:
        fail("refusal: a DSN written into the Deployment")
    ok(f"refused: a DSN written into the Deployment ({problem[0][:80]})")


# ---------------------------------------------------------------------------------------
# The native build (libkeygate_native.so) on Envoy Gateway and Istio


def makefile_envoy_version():
    """ENVOY_VERSION in the Makefile: the Envoy `make tools` installs and the tests run."""
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        (line,) = [l for l in f.read().splitlines() if l.startswith("ENVOY_VERSION := ")]
    return line.split(":= ", 1)[1].strip()


def dockerfile_native_copy():
    """envoy/Dockerfile.keygate-native's CMD, `cp SOURCE DEST`: (SOURCE, DEST), after checking
    that the image puts the module at SOURCE."""
    with open(os.path.join(ROOT, "envoy/Dockerfile.keygate-native"), encoding="utf-8") as f:
        text = f.read()
    (cmd,) = [json.loads(l[len("CMD ") :]) for l in text.splitlines() if l.startswith("CMD ")]
    if len(cmd) != 3 or cmd[0] != "cp" or os.path.basename(cmd[1]) != "libkeygate_native.so":
        fail("envoy/Dockerfile.keygate-native: CMD", f"{cmd}, not cp .../libkeygate_native.so DEST")
    if f"COPY --from=build /out/libkeygate_native.so {cmd[1]}" not in text:
        fail("envoy/Dockerfile.keygate-native", f"no COPY of the module to {cmd[1]}, which its CMD copies")
    if "--profile native -p keygate-native" not in text:
        fail("envoy/Dockerfile.keygate-native", "does not build the module as `make native` does")
    return cmd[1], cmd[2]


def check_init_copy(what, init, volumes, image):
    """`init` runs the image's `cp` into a volume of `volumes` (an emptyDir): the volume's
    name and the file name the module ends up with."""
    source, dest = dockerfile_native_copy()
    if init.get("image") != image:
        fail(f"{what}: init container image", f"{init.get('image')}, not {image}")
    if "command" in init or "args" in init:
        fail(f"{what}: init container", "runs the image's command, checked against envoy/Dockerfile.keygate-native")
    mounts = {m["mountPath"]: m["name"] for m in init.get("volumeMounts", [])}
    volume = mounts.get(os.path.dirname(dest))
    if volume is None:
        fail(f"{what}: init container", f"copies to {dest}, but mounts nothing at {os.path.dirname(dest)}: {mounts}")
    if "emptyDir" not in volumes.get(volume, {}):
        fail(f"{what}: volume {volume}", f"not an emptyDir of the pod: {volumes.get(volume)}")
    return volume, os.path.basename(dest)


def native_filter_in_listener(what, filter_entry, search_path=None):
    """envoy/keygate-native.yaml with `filter_entry` in place of its own dynamic_modules
    filter (before the router), through `envoy --mode validate`."""
    config = load_yaml(os.path.join(ROOT, "envoy/keygate-native.yaml"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    if names != ["envoy.filters.http.dynamic_modules", "envoy.filters.http.router"]:
        fail("envoy/keygate-native.yaml: http_filters", names)
    hcm["http_filters"][0] = filter_entry
    return envoy_validate(scratch("envoy-native.json", json.dumps(config)), search_path)


def native_overlays(rendered):
    print("The native build on Envoy Gateway and Istio (overlays/envoy-gateway-native, overlays/istio-native)")
    version = cargo_version()
    image = f"registry.example.com/keygate/keygate-native:{version}"
    native_dir = os.path.dirname(NATIVE)

    # Envoy Gateway: the EnvoyProxy allowlists the module by path and puts it there; the
    # policy names it and carries keygate's configuration.
    docs = {d["kind"]: d for d in rendered["envoy-gateway-native"]}
    proxy, policy, route = docs["EnvoyProxy"], docs["EnvoyExtensionPolicy"], docs["HTTPRoute"]
    (module,) = proxy["spec"]["dynamicModules"]
    if module["source"].get("type") != "Local":
        fail("EnvoyProxy: dynamicModules[0].source.type", f"{module['source'].get('type')}, not Local")
    path = module["source"]["local"]["path"]
    (entry,) = policy["spec"]["dynamicModule"]
    if entry["name"] != module["name"] or entry.get("filterName") != "keygate":
        fail("EnvoyExtensionPolicy: dynamicModule[0]", f"{entry['name']}/{entry.get('filterName')}, not {module['name']}/keygate")
    if {"kind": "HTTPRoute", "name": route["metadata"]["name"]}.items() > policy["spec"]["targetRefs"][0].items():
        fail("EnvoyExtensionPolicy (native): does not target the HTTPRoute beside it")
    ok(f"EnvoyExtensionPolicy runs {entry['name']} (filter keygate), which the EnvoyProxy allowlists at {path}, on the HTTPRoute beside it")
    check_keygate("EnvoyExtensionPolicy (native) keygate: config", entry["config"])

    deployment = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]
    (init,) = deployment["initContainers"]
    container = deployment["container"]
    volumes = {v["name"]: v for v in deployment["pod"]["volumes"]}
    volume, file_name = check_init_copy("EnvoyProxy", init, volumes, image)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts.get(os.path.dirname(path))
    if mount is None or mount["name"] != volume or file_name != os.path.basename(path) or mount.get("readOnly") is not True:
        fail("EnvoyProxy: Envoy's container", f"does not mount {volume} read-only at {os.path.dirname(path)} holding {os.path.basename(path)}: {mounts}")
    env = {e["name"]: e.get("value") for e in container["env"]}
    if env.get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH") != os.path.dirname(path):
        fail("EnvoyProxy: ENVOY_DYNAMIC_MODULES_SEARCH_PATH", f"{env}, not {os.path.dirname(path)}")
    envoy_version = makefile_envoy_version()
    if not container.get("image", "").endswith(f"-v{envoy_version}"):
        fail("EnvoyProxy: the Envoy image", f"{container.get('image')}: not Envoy {envoy_version}, which the module is built for and `make tools` installs")
    ok(f"EnvoyProxy: the init container copies the module ({image}) into {volume}, which Envoy {envoy_version} mounts where the allowlist and ENVOY_DYNAMIC_MODULES_SEARCH_PATH point")
    # The core objects inside the EnvoyProxy, as the Deployment Envoy Gateway makes of them.
    pod = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "envoy-gateway-native-pod", "namespace": "envoy-gateway-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "envoy"}},
            "template": {
                "metadata": {"labels": {"app": "envoy"}},
                "spec": {
                    "initContainers": deployment["initContainers"],
                    "containers": [{"name": "envoy", **container}],
                    "volumes": deployment["pod"]["volumes"],
                },
            },
        },
    }
    problems = k8s_problems(pod)
    if problems:
        fail("EnvoyProxy: its init container, container and volumes as a pod", "\n".join(problems))
    ok("EnvoyProxy: its init container, Envoy container settings and volumes, as a Deployment (kubernetes-validate --strict)")
    # The filter as Envoy 1.40 loads it: the module by path, `config` as a Struct.
    eg_filter = {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": NATIVE_TYPE,
            "dynamic_module_config": {"module": {"local": {"filename": path}}},
            "filter_name": entry["filterName"],
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": entry["config"]},
        },
    }

    def eg_validate(f):
        text = json.dumps(f).replace(json.dumps(path), json.dumps(NATIVE))
        return native_filter_in_listener("EnvoyExtensionPolicy (native)", json.loads(text))

    code, output = eg_validate(eg_filter)
    if code != 0:
        fail("EnvoyExtensionPolicy (native): its filter in envoy/keygate-native.yaml: envoy --mode validate", output)
    ok("EnvoyExtensionPolicy (native): its filter, module by path and config as a Struct, in envoy/keygate-native.yaml: envoy --mode validate")

    # Istio: the EnvoyFilter's patch runs in the echo workload's sidecar, whose pod copies
    # the module where istio-proxy mounts it and points ENVOY_DYNAMIC_MODULES_SEARCH_PATH there.
    docs = rendered["istio-native"]
    (envoy_filter,) = [d for d in docs if d["kind"] == "EnvoyFilter"]
    (patch,) = envoy_filter["spec"]["configPatches"]
    value = patch["patch"]["value"]
    selector = envoy_filter["spec"]["workloadSelector"]["labels"]
    workloads = [
        d for d in docs
        if d["kind"] == "Deployment" and d["metadata"].get("namespace") == envoy_filter["metadata"]["namespace"]
        and selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
    ]
    if len(workloads) != 1:
        fail("EnvoyFilter: workloadSelector", f"selects {len(workloads)} Deployments of the render in its namespace, not one")
    (workload,) = workloads
    ok(f"EnvoyFilter: inserts the native filter before the router ({patch['match']['context']}) of Deployment/{workload['metadata']['name']}, the one it selects")
    (plugin,) = keygate_filters(value)
    check_keygate("EnvoyFilter keygate: the patch's filter_config", plugin)
    template = workload["spec"]["template"]
    annotations = template["metadata"].get("annotations", {})
    if template["metadata"].get("labels", {}).get("sidecar.istio.io/inject") != "true":
        fail(f"Deployment/{workload['metadata']['name']}: no sidecar.istio.io/inject: \"true\" label")
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (init,) = pod["initContainers"]
    volume, file_name = check_init_copy(f"Deployment/{workload['metadata']['name']}", init, volumes, image)
    user_mounts = json.loads(annotations["sidecar.istio.io/userVolumeMount"])
    if set(user_mounts) != {volume} or user_mounts[volume].get("readOnly") is not True:
        fail("sidecar.istio.io/userVolumeMount", f"{user_mounts}: not {volume}, read-only")
    mount_dir = user_mounts[volume]["mountPath"]
    proxy_config = json.loads(annotations["proxy.istio.io/config"])
    search = proxy_config.get("proxyMetadata", {}).get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH")
    if search != mount_dir:
        fail("proxy.istio.io/config", f"ENVOY_DYNAMIC_MODULES_SEARCH_PATH is {search}, not {mount_dir} where istio-proxy mounts {volume}")
    name = value["typed_config"]["dynamic_module_config"]["name"]
    if f"lib{name}.so" != file_name:
        fail("EnvoyFilter: dynamic_module_config.name", f"{name}: Envoy looks for lib{name}.so, the init container copies {file_name}")
    ok(f"Deployment/{workload['metadata']['name']}: the init container copies {file_name} ({image}) into {volume}, istio-proxy mounts it at {mount_dir}, ENVOY_DYNAMIC_MODULES_SEARCH_PATH points there")
    code, output = native_filter_in_listener("EnvoyFilter", value, native_dir)
    if code != 0:
        fail("EnvoyFilter: its patch value in envoy/keygate-native.yaml: envoy --mode validate", output)
    ok("EnvoyFilter: its patch value in envoy/keygate-native.yaml, module found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH: envoy --mode validate")

    print("Native-build checks refuse broken copies")
    broken = copy.deepcopy(policy)
    broken["spec"]["dynamicModule"][0]["name"] = "keygate_native"
    refused_k8s("EnvoyExtensionPolicy naming a module keygate_native (Envoy Gateway's names take no underscore)", broken, "keygate_native")
    broken = copy.deepcopy(proxy)
    broken["spec"]["dynamicModules"][0]["source"]["type"] = "File"
    refused_k8s("EnvoyProxy with a module source of type File", broken, "File")
    broken = copy.deepcopy(proxy)
    broken["spec"]["dynamicModule"] = broken["spec"].pop("dynamicModules")
    refused_k8s("EnvoyProxy with dynamicModule (the policy's spelling) for dynamicModules", broken, "dynamicModule")
    broken = copy.deepcopy(envoy_filter)
    broken["spec"]["configPatches"][0]["patch"]["operation"] = "INSERT_AFTER"
    refused_k8s("EnvoyFilter inserting keygate after the router", broken, "INSERT_AFTER")
    broken = copy.deepcopy(envoy_filter)
    broken["spec"]["configPatches"][0]["match"]["context"] = "SIDECAR_OUTBOUND"
    refused_k8s("EnvoyFilter on the sidecar's outbound traffic", broken, "SIDECAR_OUTBOUND")
    broken_filter = copy.deepcopy(eg_filter)
    broken_filter["typed_config"]["filter_config"]["value"]["unmatched"] = "nope"
    code, output = eg_validate(broken_filter)
    if code == 0 or "unmatched" not in output:
        fail("refusal: the policy's filter with keygate's unmatched set to nope", output)
    ok("refused: the policy's filter with \"unmatched\": \"nope\" (envoy --mode validate, the module's own parser)")
    broken_value = copy.deepcopy(value)
    broken_value["typed_config"]["dynamic_module_config"]["name"] = "keygate_nativ"
    code, output = native_filter_in_listener("EnvoyFilter", broken_value, native_dir)
    if code == 0 or "libkeygate_nativ.so" not in output:
        fail("refusal: the EnvoyFilter's patch naming a module that is not there", output)
    ok("refused: the EnvoyFilter's patch naming a module that is not there (envoy --mode validate: libkeygate_nativ.so not found)")
    code, output = native_filter_in_listener("EnvoyFilter", value, os.path.join(TMP, "no-module-here"))
    if code == 0 or "libkeygate_native.so" not in output:
        fail("refusal: the EnvoyFilter's patch with ENVOY_DYNAMIC_MODULES_SEARCH_PATH pointing elsewhere", output)
    ok("refused: the EnvoyFilter's patch with ENVOY_DYNAMIC_MODULES_SEARCH_PATH where the module is not (envoy --mode validate)")


def endpoint_problems(docs):
    """Envoy's STRICT_DNS clusters in the ConfigMap keygate-envoy each call a Service of the
    same render, as NAME.NAMESPACE.svc[.cluster.local], on one of its ports."""
    services = {}
    for d in docs:
        if d["kind"] == "Service":
            services[(d["metadata"]["name"], d["metadata"].get("namespace"))] = {p["port"] for p in d["spec"]["ports"]}
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and "envoy.yaml" in d.get("data", {})]
    config = yaml.safe_load(configmap["data"]["envoy.yaml"])
    problems = []
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                parts = address["address"].split(".")
                key = (parts[0], parts[1] if len(parts) > 2 and parts[2] == "svc" else None)
                if address["port_value"] not in services.get(key, set()):
                    problems.append(f"cluster {cluster['name']} calls {address['address']}:{address['port_value']}, no such Service port")
    return problems


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        section = f.read().split("[workspace.package]", 1)[1]
    return section.split('version = "', 1)[1].split('"', 1)[0]


def dockerfile_flags():
    """The key service's flags in envoy/Dockerfile.keygate-serve's CMD."""
    with open(os.path.join(ROOT, "envoy/Dockerfile.keygate-serve"), encoding="utf-8") as f:
        (cmd,) = [json.loads(l[len("CMD ") :]) for l in f.read().splitlines() if l.startswith("CMD ")]
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    if cmd[0] != "serve" or set(flags) != {"--db", "--listen", "--tls-cert", "--tls-key", "--client-ca"}:
        fail("envoy/Dockerfile.keygate-serve: CMD", cmd)
    return flags


def check_projected_tls(what, pod, path, secret):
    """`path` holds tls.crt and tls.key from the Secret `secret` and ca.crt from the
    ConfigMap keygate-ca."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
    sources = volumes.get(mounts.get(path), {}).get("projected", {}).get("sources", [])
    found = {}
    for source in sources:
        for kind in ("secret", "configMap"):
            if kind in source:
                for item in source[kind]["items"]:
                    found[item["path"]] = (kind, source[kind]["name"], item["key"])
    want = {
        "tls.crt": ("secret", secret, "tls.crt"),
        "tls.key": ("secret", secret, "tls.key"),
        "ca.crt": ("configMap", "keygate-ca", "ca.crt"),
    }
    if found != want:
        fail(f"{what}: {path}", f"{found} vs {want}")


def compose():
    print("docker-compose stack (envoy/docker-compose.yaml)")
    path = os.path.join(ROOT, "envoy/docker-compose.yaml")
    run = subprocess.run([*COMPOSE, "-f", path, "config", "-q"], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{shlex.join(COMPOSE)} -f envoy/docker-compose.yaml config", run.stdout + run.stderr)
    ok(f"{shlex.join(COMPOSE)} -f envoy/docker-compose.yaml config")

    stack = load_yaml(path)
    services = stack["services"]
    if set(services) != {"envoy", "keyservice", "echo"}:
        fail("compose services", f"{sorted(services)}")
    if services["envoy"]["image"] != "envoyproxy/envoy:v1.40-latest":
        fail("compose: envoy image", services["envoy"]["image"])
    mounts = {v["target"]: v["source"] for v in services["envoy"]["volumes"]}
    compose_dir = os.path.dirname(path)
    config_path = os.path.normpath(os.path.join(compose_dir, mounts["/etc/envoy/envoy.yaml"]))
    module_path = os.path.normpath(os.path.join(compose_dir, mounts["/etc/envoy/keygate.wasm"]))
    if module_path != os.path.join(ROOT, "target/wasm32-wasip1/release/keygate.wasm"):
        fail("compose: the module mounted is not the one `make wasm` builds", module_path)
    build = services["keyservice"]["build"]
    dockerfile = os.path.normpath(os.path.join(compose_dir, build["context"], build["dockerfile"]))
    if not os.path.isfile(dockerfile):
        fail("compose: keyservice Dockerfile", dockerfile)
    text = open(config_path, encoding="utf-8").read()
    config = yaml.safe_load(text)
    # Every STRICT_DNS endpoint is a service of the stack, on a port that service offers.
    exposed = {name: {int(p) for p in s.get("expose", [])} for name, s in services.items()}
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                host, port = address["address"], address["port_value"]
                if port not in exposed.get(host, set()):
                    fail(f"{rel(config_path)}: cluster {cluster['name']} calls {host}:{port}", f"not a service port of the stack: {exposed}")
    published = {p.split(":")[-1] for p in services["envoy"]["ports"]}
    listening = {str(config["admin"]["address"]["socket_address"]["port_value"])} | {
        str(l["address"]["socket_address"]["port_value"]) for l in config["static_resources"]["listeners"]
    }
    if published != listening:
        fail("compose: ports published for envoy", f"{published} vs what envoy.yaml listens on {listening}")
    ok("compose: the Envoy config calls the stack's services and listens where compose publishes")
    with open(dockerfile, encoding="utf-8") as f:
        dockerfile_text = f.read()
    if "EXPOSE 8443" not in dockerfile_text:
        fail(f"{rel(dockerfile)}: EXPOSE 8443")
    flags = dockerfile_flags()
    if flags["--listen"].rsplit(":", 1)[1] not in services["keyservice"]["expose"]:
        fail("compose: keyservice listens on a port it does not expose", flags["--listen"])
    # The key service's database on the named volume; its certificate, key and CA bound from
    # envoy/compose/tls/, where the Dockerfile's command reads them.
    keyservice_mounts = {}
    for v in services["keyservice"]["volumes"]:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            if source not in stack.get("volumes", {}):
                fail("compose: keyservice", f"{v}: not a named volume of the stack")
            keyservice_mounts[target] = ("volume", source)
        else:
            keyservice_mounts[v["target"]] = (v["type"], v["source"])
    if keyservice_mounts.get(os.path.dirname(flags["--db"]), ("",))[0] != "volume":
        fail("compose: keyservice", f"--db {flags['--db']} is not on a named volume: {keyservice_mounts}")
    tls_dir = os.path.join(compose_dir, "compose/tls")
    wanted = {flags["--tls-cert"]: "keyservice.crt", flags["--tls-key"]: "keyservice.key", flags["--client-ca"]: "ca.crt"}
    envoy_wanted = {"/etc/envoy-tls/tls.crt": "envoy.crt", "/etc/envoy-tls/tls.key": "envoy.key", "/etc/envoy-tls/ca.crt": "ca.crt"}
    for service, want in [("keyservice", wanted), ("envoy", envoy_wanted)]:
        binds = {v["target"]: v for v in services[service]["volumes"] if isinstance(v, dict)}
        for target, name in want.items():
            bind = binds.get(target)
            if bind is None or bind.get("read_only") is not True or bind["type"] != "bind":
                fail(f"compose: {service}", f"{target} is not bound read-only: {binds.get(target)}")
            if os.path.normpath(os.path.join(compose_dir, bind["source"])) != os.path.join(tls_dir, name):
                fail(f"compose: {service}: {target}", f"bound from {bind['source']}, not compose/tls/{name}")
    for target in envoy_wanted:
        if f"filename: {target} " not in text:
            fail(f"{rel(config_path)}: does not read {target}")
    for ignore in (".gitignore", ".dockerignore"):
        with open(os.path.join(ROOT, ignore), encoding="utf-8") as f:
            if "/envoy/compose/tls" not in f.read().split():
                fail(f"{ignore}: envoy/compose/tls (private keys) is not ignored")
    ok("compose: keyservice runs the Dockerfile's command on the volume, with its certificates bound where it reads them")
    ok("compose: Envoy reads its client certificate and the CA where the compose file binds them; compose/tls/ is git- and docker-ignored")
    (plugin,) = keygate_filters(config)
    check_keygate(f"{rel(config_path)}: keygate's configuration", plugin)
    check_server_name(rel(config_path), config)
    compose_certs = envoy_tls_files()
    check_envoy(rel(config_path), with_certificates(with_module(text, "/etc/envoy/keygate.wasm"), compose_certs))

    print("docker-compose and envoy checks refuse broken copies")

    def compose_config(stack_copy):
        # Beside the original, so that its relative paths mean the same.
        copy_path = os.path.join(compose_dir, ".docker-compose.check.yaml")
        try:
            with open(copy_path, "w", encoding="utf-8") as f:
                yaml.safe_dump(stack_copy, f)
            return subprocess.run([*COMPOSE, "-f", copy_path, "config", "-q"], capture_output=True, text=True)
        finally:
            os.remove(copy_path)

    run = compose_config(stack)
    if run.returncode != 0:
        fail("compose: an unchanged copy, as the refusals below write it", run.stdout + run.stderr)
    for what, expect, mutate in [
        ("a misspelled top-level key (servics)", "'servics'", lambda s: s.__setitem__("servics", s.pop("services"))),
        ("ports given as a number", "services.envoy.ports", lambda s: s["services"]["envoy"].__setitem__("ports", 10000)),
    ]:
        broken = copy.deepcopy(stack)
        mutate(broken)
        run = compose_config(broken)
        if run.returncode == 0 or expect not in run.stdout + run.stderr:
            fail(f"refusal: compose file with {what}", run.stdout + run.stderr or "accepted")
        ok(f"refused: compose file with {what}")
    code, output = envoy_validate(
        scratch(
            "broken-envoy.yaml",
            with_certificates(with_module(text, "/etc/envoy/keygate.wasm"), compose_certs).replace(
                '"unmatched": "deny"', '"unmatched": "nope"'
            ),
        )
    )
    if code == 0 or "unmatched" not in output:
        fail("refusal: compose Envoy config with keygate's unmatched set to nope", output)
    ok("refused: compose Envoy config with keygate's \"unmatched\": \"nope\" (envoy --mode validate)")
    code, output = envoy_validate(
        scratch(
            "broken-envoy.yaml",
            with_module(text, "/etc/envoy/keygate.wasm").replace(
                "/etc/envoy-tls/tls.key", compose_certs["/etc/envoy-tls/ca.crt"]
            ).replace("/etc/envoy-tls/tls.crt", compose_certs["/etc/envoy-tls/tls.crt"]).replace(
                "/etc/envoy-tls/ca.crt", compose_certs["/etc/envoy-tls/ca.crt"]
            ),
        )
    )
    if code == 0:
        fail("refusal: compose Envoy config with the CA given as Envoy's private key", output)
    ok("refused: compose Envoy config with a certificate where its private key should be (envoy --mode validate)")


def ecds():
    print("ECDS (envoy/keygate-ecds.yaml + envoy/keygate-ecds-filter.yaml)")
    listener_config = load_yaml(os.path.join(ROOT, "envoy/keygate-ecds.yaml"))
    resource_file = load_yaml(os.path.join(ROOT, "envoy/keygate-ecds-filter.yaml"))
    (resource,) = resource_file["resources"]
    if resource["@type"] != "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig":
        fail("ECDS resource type", resource["@type"])
    hcm = listener_config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    discovered = [i for i, f in enumerate(filters) if "config_discovery" in f]
    if len(discovered) != 1:
        fail("keygate-ecds.yaml: one filter from config_discovery")
    i = discovered[0]
    source = filters[i]["config_discovery"]
    if filters[i]["name"] != resource["name"]:
        fail("ECDS: the listener asks for a resource the file does not hold", f"{filters[i]['name']} vs {resource['name']}")
    if source["config_source"]["path_config_source"]["path"] != "envoy/keygate-ecds-filter.yaml":
        fail("ECDS: the listener watches another file", source)
    if resource["typed_config"]["@type"] not in source["type_urls"]:
        fail("ECDS: the resource's type is not one the listener accepts")
    ok("ECDS: the listener asks for the resource the file holds, of a type it accepts")
    (plugin,) = keygate_filters(resource_file)
    check_keygate("envoy/keygate-ecds-filter.yaml: keygate's configuration", plugin)
    # `envoy --mode validate` does not read ECDS resources: validate the listener with the
    # resource put in place of its config_discovery.
    inlined = copy.deepcopy(listener_config)
    inlined_hcm = inlined["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    inlined_hcm["http_filters"][i] = {"name": "envoy.filters.http.wasm", "typed_config": resource["typed_config"]}
    check_envoy("envoy/keygate-ecds.yaml with its ECDS resource inlined", json.dumps(inlined))


def main():
    for tool in (ENVOY, WASM, KEYGATE, NATIVE):
        if not os.path.isfile(tool):
            fail(f"missing {tool}", "run `make tools wasm native-dev` and `cargo build --bin keygate`")
    if not shutil.which(KUSTOMIZE[0]):
        fail(f"missing {KUSTOMIZE[0]}", "kubectl (it embeds kustomize), or KUSTOMIZE='kustomize build'")
    if not shutil.which(COMPOSE[0]):
        fail(f"missing {COMPOSE[0]}", "`make deploy-tools` installs Debian's docker-compose")
    os.chdir(ROOT)
    kubernetes()
    compose()
    ecds()
    refusals = sum(1 for p in passed if p.startswith("refused"))
    print(f"validate-deploy: all {len(passed)} checks passed ({refusals} of them broken copies refused)")


if __name__ == "__main__":
    main()
