"""Regenerates httproute.gateway.networking.k8s.io.v1.json from the npm package that
carries it, @kubernetes-models/gateway-api 0.5.1 (kubernetes-models-ts, generated from
kubernetes-sigs/gateway-api v1.0.0 standard-install.yaml):

    npm pack @kubernetes-models/gateway-api@0.5.1
    tar xzf kubernetes-models-gateway-api-0.5.1.tgz
    python3 tests/schemas/from_kubernetes_models.py \
        package/gateway.networking.k8s.io/v1/HTTPRoute.js \
        > tests/schemas/httproute.gateway.networking.k8s.io.v1.json

The package's module holds the schema as a JSON literal (`const schema = {...};`). The one
change: `metadata`, a $ref to the package's ObjectMeta schema, becomes `{"type": "object"}`,
as in the CRD itself (the API server checks metadata on its own).
"""

import json
import sys

text = open(sys.argv[1], encoding="utf-8").read()
start = text.index("const schema = ") + len("const schema = ")
end = text.index("\n};\n", start) + 2
schema = json.loads(text[start:end])
schema["properties"]["metadata"] = {"type": "object"}
json.dump(schema, sys.stdout, indent=1, sort_keys=True)
sys.stdout.write("\n")
