"""An independent reader of Sorrel's content credentials: the C2PA project's own Python bindings.

Usage: c2pa_read.py FILE [ANCHOR_PEM]
A .webm is read with the sidecar manifest beside it (same name, .c2pa). Prints one JSON object: the validation state, failures, generator, the creating action's
digitalSourceType, and the ingredients' titles (with whether each kept its own manifest), as c2pa-python
reads them.
"""

import json
import pathlib
import sys

import c2pa

path = sys.argv[1]
context = None
if len(sys.argv) > 2:
    anchors = open(sys.argv[2]).read()
    settings = c2pa.Settings.from_dict({"trust": {"user_anchors": anchors}, "verify": {"verify_trust": True}})
    context = c2pa.Context(settings)

if path.endswith(".webm"):
    sidecar = pathlib.Path(path).with_suffix(".c2pa").read_bytes()
    stream = open(path, "rb")
    reader = c2pa.Reader("video/webm", stream, manifest_data=sidecar, context=context)
else:
    reader = c2pa.Reader(path, context=context) if context else c2pa.Reader(path)
store = json.loads(reader.json())
active = store["manifests"][store["active_manifest"]]
actions = next(a["data"]["actions"] for a in active["assertions"] if a["label"].startswith("c2pa.actions"))
created = next(a for a in actions if a["action"] == "c2pa.created")
failures = store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
print(json.dumps({
    "reader": f"c2pa-python (c2pa-rs {c2pa.sdk_version()})",
    "state": reader.get_validation_state(),
    "failures": [f["code"] for f in failures],
    "generator": active["claim_generator_info"][0]["name"],
    "digital_source_type": created.get("digitalSourceType"),
    "ingredients": [i.get("title") for i in active.get("ingredients", [])],
    "ingredient_manifests": [i.get("active_manifest") is not None for i in active.get("ingredients", [])],
}))
