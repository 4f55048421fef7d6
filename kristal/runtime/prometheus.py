"""Metric checks of a bake against Prometheus' HTTP API (`GET /api/v1/query`): the query with
the activation's variables filled in, every returned sample held to the check's condition.

A query that errors, times out, returns no sample or a non-number is inconclusive, never
passed: a monitor that is down must not make a bake pass.
"""

from __future__ import annotations

import base64
import json
import math
import string
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kristal.config import PrometheusSettings
from kristal.formats.bake_docs import MetricCheck, MetricResult, condition_holds
from kristal.formats.channel_docs import ActivationRecord

MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class Inconclusive(Exception):
    """The query gave no usable answer (the message says why)."""


def variables(record: ActivationRecord) -> dict[str, str]:
    tenant, environment, region = record.channel_id.split("/")
    return {"channel": record.channel_id, "tenant": tenant, "environment": environment,
            "region": region, "release": str(record.active.release_id),
            "activation_id": record.activation_id, "sequence": str(record.sequence)}


def render(query: str, record: ActivationRecord) -> str:
    """`$channel`-style variables replaced (PromQL's `{}` left alone); an unknown `$name` is
    left as written, so Prometheus reports it rather than a silently different query."""
    return string.Template(query).safe_substitute(variables(record))


def instant_query(settings: PrometheusSettings, query: str) -> list[float]:
    """The sample values of an instant query (a vector's samples or a scalar)."""
    url = f"{settings.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if settings.token:
        request.add_header("Authorization", f"Bearer {settings.token}")
    elif settings.user:
        pair = f"{settings.user}:{settings.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise Inconclusive(f"Prometheus answered HTTP {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Inconclusive(f"Prometheus at {settings.url} unreachable: {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise Inconclusive("Prometheus answer larger than 4 MiB")
    try:
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise Inconclusive(f"Prometheus: {doc.get('errorType')}: {doc.get('error')}")
        data = doc["data"]
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            raw: list[Any] = [result[1]]
        elif kind == "vector":
            raw = [sample["value"][1] for sample in result]
        else:
            raise Inconclusive(f"the query returns a {kind}, not an instant vector or scalar")
        values = [float(v) for v in raw]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise Inconclusive(f"unreadable Prometheus answer: {exc}") from None
    if not values:
        raise Inconclusive("the query returned no sample")
    if any(math.isnan(v) for v in values):
        raise Inconclusive("the query returned NaN")
    return values


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read(64 * 1024))
        return f"{doc.get('errorType')}: {doc.get('error')}"
    except (ValueError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "error"


def evaluate(settings: PrometheusSettings | None, check: MetricCheck,
             record: ActivationRecord) -> MetricResult:
    query = render(check.query, record)
    values: list[float] = []
    if settings is None:
        result, detail = "inconclusive", "no Prometheus configured (KRISTAL_PROMETHEUS_URL)"
    else:
        try:
            values = instant_query(settings, query)
        except Inconclusive as exc:
            result, detail = "inconclusive", str(exc)
        else:
            bad = [v for v in values if not condition_holds(check.condition, v)]
            result = "failed" if bad else "passed"
            shown = ", ".join(f"{v:.4g}" for v in (bad or values)[:5])
            detail = (f"{shown} not {check.condition}" if bad
                      else f"{shown} {check.condition}")
    return MetricResult(name=check.name, query=query, condition=check.condition,
                        values=values, result=result,
                        detail=detail)
