"""The baseline for bench/ack_throughput.py: a bare Flask endpoint that answers 202.

It reads the body and answers a JSON summary of the same shape as caselink's,
so the difference between the two is caselink's own work (authentication,
parsing, rules, the store transaction, logging, metrics), not HTTP or Flask.
It imports nothing from caselink and runs none of its gunicorn hooks.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask import jsonify
from flask import request

app = Flask(__name__)


@app.post("/webhooks/<source>")
def receive(source: str) -> tuple[Any, int]:
    body = request.get_data(cache=False)
    summary = {"events": [{"id": 0, "kind": source, "duplicate": False, "links_planned": 0}], "links_planned": 0}
    summary["bytes"] = len(body)
    return jsonify(summary), 202


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
