#!/usr/bin/env python3
"""Seeds the fuzz corpora from the repository's own test data: one file per record, time string, pipeline
and plugin configuration. Usage: fuzz-seeds.py CORPUS_ROOT (it gets one folder per fuzz target)."""
import glob
import gzip
import hashlib
import json
import os
import sys

root = sys.argv[1]


def put(target, text):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def records(pattern):
    for path in sorted(glob.glob(pattern))[:12]:
        raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        text = raw.decode()
        if text.lstrip().startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        for item in items[:20]:
            yield json.dumps(item)


for r in records("examples/data/azure/*/*"):
    put("normalize_azure", r)
    # The Microsoft Graph shape: the sign-in at the top level.
    props = json.loads(r).get("properties")
    if props:
        put("normalize_azure", json.dumps(props))
for r in records("examples/data/duo/*/*"):
    put("normalize_duo", r)
for r in records("examples/data/gws/*/*"):
    put("normalize_family", r)
for t in ["2026-10-01T08:15:02.1234567Z", "2026-10-01T08:15:02+02:00", "2026-10-01 08:15:02", "2026-10-01",
          "10/1/2026 8:15:02 AM", "10/1/2026 8:15:02 PM +02:00", "2026-10-01T08:15:02.123Z",
          "AZUREAD_2022-08-01T00_03_56.207Z.json"]:
    put("time_parser", t)
for path in sorted(glob.glob("pipelines/*.yaml")) + sorted(glob.glob("examples/gws/*.yaml")):
    text = open(path).read()
    if "plugins" not in text:
        put("pipeline_yaml", text)
for c in [{"column": "username"}, {"column": "x", "limit": 3, "values": ["a", "b"], "nested": {"k": 1.5}},
          {"column": 1}, {"limit": 0, "column": "c"}, {}]:
    put("plugin_config", json.dumps(c))
print("seeded", ", ".join(f"{t} {len(os.listdir(os.path.join(root, t)))}" for t in sorted(os.listdir(root))))
