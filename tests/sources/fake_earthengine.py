"""A fake Earth Engine REST server on 127.0.0.1 that the real earthengine-api client talks to.

Earth Engine cannot be reached from the test machines, so this is the one stand-in: the real
``ee`` client (discovery, algorithm list, serialisation, OAuth token exchange, computePixels,
value:compute, NPY decoding) runs unchanged against ``http://127.0.0.1:PORT``. The server:

* serves ``tests/data/earthengine/discovery.json`` (the v1 methods LAS calls) and
  ``algorithms.json`` (the recorded signatures of the algorithms LAS's expressions use);
* exchanges a service-account JWT for a token at ``/token`` (the key file's ``token_uri``) and
  refuses API calls without that bearer token;
* records every request body, checks that each expression only calls listed algorithms, and
  answers ``image:computePixels`` with an ``.npy`` structured array of the requested grid size
  whose fields are the expression's output bands, and ``value:compute`` with what a test's
  responder returns.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "earthengine"
TOKEN = "fake-ee-access-token"

_CASTS = {
    "Image.toUint8": "uint8",
    "Image.toUint16": "uint16",
    "Image.toInt16": "int16",
    "Image.toInt32": "int32",
    "Image.toFloat": "float32",
    "Image.toDouble": "float64",
}
_IMAGE_ARGS = ("input", "image", "value", "collection", "images", "dstImg")


def resolve(expression: dict[str, Any]) -> Any:
    """Inline the value references of a serialised EE expression into one tree."""
    values = expression["values"]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"valueReference"}:
                return walk(values[node["valueReference"]])
            if "functionDefinitionValue" in node:  # a mapped function: its body is a reference
                definition = dict(node["functionDefinitionValue"])
                definition["body"] = walk(values[definition["body"]])
                return {"functionDefinitionValue": definition}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(values[expression["result"]])


def invocations(tree: Any) -> Iterator[dict[str, Any]]:
    """Every ``functionInvocationValue`` of a resolved tree, outermost first."""
    if isinstance(tree, dict):
        if "functionInvocationValue" in tree:
            yield tree["functionInvocationValue"]
        for value in tree.values():
            yield from invocations(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from invocations(value)


def constant(node: Any) -> Any:
    """The plain value of a resolved constant, list of constants or ``arrayValue``."""
    if isinstance(node, dict) and "constantValue" in node:
        return node["constantValue"]
    if isinstance(node, dict) and "arrayValue" in node:
        return [constant(v) for v in node["arrayValue"]["values"]]
    if isinstance(node, dict) and "dictionaryValue" in node:
        return {k: constant(v) for k, v in node["dictionaryValue"]["values"].items()}
    return node


def output_bands(node: Any) -> list[str]:
    """The band names an image expression yields (the subset of EE semantics LAS uses)."""
    call = node["functionInvocationValue"]
    name, args = call["functionName"], call.get("arguments", {})
    if name == "Image.select":
        return list(constant(args.get("newNames") or args["bandSelectors"]))
    if name == "Image.rename":
        return list(constant(args["names"]))
    if name == "Image.addBands":
        return output_bands(args["dstImg"]) + output_bands(args["srcImg"])
    for key in _IMAGE_ARGS:
        if key in args:
            inner = args[key]
            if "arrayValue" in inner:
                inner = inner["arrayValue"]["values"][0]
            if "functionInvocationValue" in inner:
                return output_bands(inner)
    raise AssertionError(f"cannot tell the bands of {name}")


def output_dtype(tree: Any) -> str:
    """The pixel type of an image expression: its outermost cast."""
    return _CASTS[tree["functionInvocationValue"]["functionName"]]


@dataclass
class FakeEarthEngine:
    """State of the fake server: what it was asked and how it answers."""

    url: str = ""
    algorithms: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    pixels: Callable[[dict[str, Any], list[str], str], np.ndarray] | None = None
    value: Callable[[Any], Any] | None = None

    def reset(self) -> None:
        """Forget the requests and the test's answers."""
        self.requests.clear()
        self.token_requests.clear()
        self.values = {"SCL": 4}
        self.pixels = None
        self.value = None

    def calls(self, kind: str) -> list[dict[str, Any]]:
        """Recorded bodies of ``computePixels`` or ``compute`` (value:compute) requests."""
        return [r["body"] for r in self.requests if r["path"].endswith(f":{kind}")]

    def default_pixels(self, body: dict[str, Any], bands: list[str], dtype: str) -> np.ndarray:
        """Band i holds ``values[name]``, else ``10 * (i + 1)`` (``-(i + 1)`` for floats)."""
        dims = body["grid"]["dimensions"]
        shape = (dims["height"], dims["width"])
        out = np.zeros(shape, dtype=[(b, dtype) for b in bands])
        for i, band in enumerate(bands):
            floating = np.issubdtype(np.dtype(dtype), np.floating)
            out[band] = self.values.get(band, -(i + 1.0) if floating else 10 * (i + 1))
        return out


def _handler(fake: FakeEarthEngine) -> type[BaseHTTPRequestHandler]:
    discovery = (DATA / "discovery.json").read_bytes()
    algorithms = (DATA / "algorithms.json").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, reason: str = "INVALID_ARGUMENT") -> None:
            body = {"error": {"code": status, "message": message, "status": reason}}
            self._send(status, json.dumps(body).encode())

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._error(
                    401, "Request had invalid authentication credentials.", "UNAUTHENTICATED"
                )
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = urllib.parse.urlsplit(self.path).path
            if path == "/$discovery/rest":
                self._send(200, discovery)
            elif path.startswith("/v1/projects/") and path.endswith("/algorithms"):
                if self._authorised():
                    self._send(200, algorithms)
            else:
                self._error(404, f"no such path {path}", "NOT_FOUND")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            try:
                self._post()
            except Exception as err:  # noqa: BLE001 - a 400 tells the client, no retries
                self._error(400, f"fake Earth Engine could not answer: {err!r}")

        def _post(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if path == "/token":
                form = dict(urllib.parse.parse_qsl(raw.decode()))
                fake.token_requests.append(form)
                body = {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                self._send(200, json.dumps(body).encode())
                return
            if not self._authorised():
                return
            body = json.loads(raw)
            fake.requests.append({"path": path, "body": body, "headers": dict(self.headers)})
            tree = resolve(body["expression"])
            unknown = {c["functionName"] for c in invocations(tree)} - fake.algorithms
            if unknown:
                self._error(400, f"Unknown algorithms: {sorted(unknown)}")
                return
            if path.endswith("/image:computePixels"):
                if body.get("fileFormat") != "NPY":
                    self._error(400, f"fileFormat {body.get('fileFormat')!r}: this fake serves NPY")
                    return
                bands, dtype = output_bands(tree), output_dtype(tree)
                array = (fake.pixels or fake.default_pixels)(body, bands, dtype)
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=False)
                self._send(200, buffer.getvalue(), "application/octet-stream")
            elif path.endswith("/value:compute"):
                if fake.value is None:
                    self._error(500, "the test set no value responder", "INTERNAL")
                    return
                self._send(200, json.dumps({"result": fake.value(tree)}).encode())
            else:
                self._error(404, f"no such method {path}", "NOT_FOUND")

    return Handler


def jwt_claims(assertion: str) -> dict[str, Any]:
    """The claims of a JWT (without checking it)."""
    payload = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def start_fake_earthengine() -> tuple[FakeEarthEngine, ThreadingHTTPServer]:
    """Start the fake on a free port of 127.0.0.1 in a daemon thread."""
    listed = json.loads((DATA / "algorithms.json").read_text())["algorithms"]
    fake = FakeEarthEngine(algorithms={a["name"].removeprefix("algorithms/") for a in listed})
    fake.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
