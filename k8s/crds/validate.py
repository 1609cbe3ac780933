#!/usr/bin/env python3
"""Validate the custom resources of rendered manifests against vendored CRD schemas.

    validate.py check FILE...           every custom resource in the (multi-document) YAML files
    validate.py extract --source TEXT CRD.yaml...
                                        write schemas/<group>_<version>_<Kind>.json from CRDs

A custom resource is any object whose API group has a dot and is not a Kubernetes group
(*.k8s.io); `kubernetes-validate` checks the others. Each one must have a vendored schema
here (schemas/, see README.md), so no custom resource goes unchecked.

Checking is as strict as the API server with field validation "Strict": the CRD's OpenAPI v3
schema, with unknown fields refused wherever the schema lists the properties and does not say
`x-kubernetes-preserve-unknown-fields`. Not checked: CEL rules (x-kubernetes-validations) and
`format`, which only a server evaluates.
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def schema_file(group, version, kind):
    return SCHEMAS / f"{group}_{version}_{kind}.json"


def strict(node):
    """The schema as the API server applies it: unknown fields refused, nullable honoured."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def is_custom(api_version):
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def check(paths):
    validators = {}
    failures = checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            if not is_custom(api_version):
                continue
            name = (doc.get("metadata") or {}).get("name", "")
            where = f"{Path(path).name}: {kind} {name or '(no name)'} ({api_version})"
            group, _, version = api_version.partition("/")
            file = schema_file(group, version, kind)
            if not file.exists():
                print(f"FAIL {where}: no vendored schema ({file.name}); see k8s/crds/README.md")
                failures += 1
                continue
            if file not in validators:
                schema = strict(json.loads(file.read_text(encoding="utf-8")))
                validators[file] = jsonschema.Draft4Validator(schema)
            errors = sorted(validators[file].iter_errors(doc), key=lambda e: list(e.path))
            bad = bool(errors)
            if not NAME.match(name) or len(name) > 253:
                print(f"FAIL {where}: metadata.name must be a DNS subdomain")
                bad = True
            for error in errors:
                field = ".".join(str(p) for p in error.path) or "(root)"
                print(f"FAIL {where}: {field}: {error.message[:300]}")
            failures += bad
            checked += 1
    print(f"custom resources: {checked} checked against their CRD schemas, {failures} failed")
    return 1 if failures else 0


def extract(source, paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served"):
                        continue
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schema = {"$comment": f"{crd['metadata']['name']} {version['name']}, "
                              f"from {source}", **schema}
                    out = schema_file(spec["group"], version["name"], spec["names"]["kind"])
                    out.write_text(json.dumps(schema, indent=1) + "\n", encoding="utf-8")
                    print(f"wrote {out.relative_to(SCHEMAS.parent)}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate custom resources in YAML files")
    p_check.add_argument("files", nargs="+")
    p_extract = sub.add_parser("extract", help="vendor schemas from CRD YAML files")
    p_extract.add_argument("--source", required=True, help="where the CRD files came from")
    p_extract.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "check":
        return check(args.files)
    return extract(args.source, args.files)


if __name__ == "__main__":
    sys.exit(main())
