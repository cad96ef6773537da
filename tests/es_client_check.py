"""Drives the Elasticsearch stand-in (tests/common/es.rs) with the official Python client's bulk helpers.

Run by tests/elasticsearch.rs: `python es_client_check.py URL`. The stand-in has been told beforehand to
refuse document `retry-me` with 429 twice and document `bad` with 400. Prints one JSON object with what
the client saw; the Rust test compares it with what a real Elasticsearch answers.
"""

import json
import sys

from elasticsearch import Elasticsearch, helpers

url = sys.argv[1]
es = Elasticsearch(url, max_retries=0, request_timeout=10)
out = {"info_version": es.info()["version"]["number"]}


def docs(op, ids, index="py-test"):
    return [{"_op_type": op, "_index": index, "_id": i, "_source": {"n": n, "user": f"u{n}"}} for n, i in enumerate(ids)]


# 1. index five documents, then the same five again: 5 created, then 5 updated (version 2), count 5.
ok, errors = helpers.bulk(es, docs("index", [f"d{i}" for i in range(5)]), raise_on_error=False)
out["first"] = {"ok": ok, "errors": len(errors)}
ok, errors = helpers.bulk(es, docs("index", [f"d{i}" for i in range(5)]), raise_on_error=False)
out["again"] = {"ok": ok, "errors": len(errors)}
out["count_after_index"] = es.count(index="py-test")["count"]
doc = es.get(index="py-test", id="d3")
out["get"] = {"found": doc["found"], "version": doc["_version"], "n": doc["_source"]["n"]}

# 2. create: two existing ids and one new: two 409 version conflicts, one created.
ok, errors = helpers.bulk(es, docs("create", ["d0", "d1", "d9"]), raise_on_error=False)
out["create"] = {
    "ok": ok,
    "errors": sorted((e["create"]["status"], e["create"]["error"]["type"]) for e in errors),
}

# 3. 429 twice for one document: streaming_bulk retries it with its backoff and succeeds.
results = list(
    helpers.streaming_bulk(
        es, docs("index", ["retry-me", "other"]), max_retries=3, initial_backoff=0.01, raise_on_error=False
    )
)
out["retried"] = sorted((r[0], list(r[1].values())[0]["status"]) for r in results)

# 4. 400 for one document: reported as an error with the server's type, the others are stored.
ok, errors = helpers.bulk(es, docs("index", ["bad", "good"]), raise_on_error=False)
out["rejected"] = {
    "ok": ok,
    "errors": [(e["index"]["_id"], e["index"]["status"], e["index"]["error"]["type"]) for e in errors],
}

# 5. count, get of a missing id, search by ids.
out["count"] = es.count(index="py-*")["count"]
try:
    es.get(index="py-test", id="bad")
    out["missing"] = "found"
except Exception as e:  # NotFoundError
    out["missing"] = type(e).__name__
hits = es.search(index="py-test", query={"ids": {"values": ["d1", "d9", "bad"]}})["hits"]
out["search"] = {"total": hits["total"]["value"], "ids": sorted(h["_id"] for h in hits["hits"])}
print(json.dumps(out, sort_keys=True))
