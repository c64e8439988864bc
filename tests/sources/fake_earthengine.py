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
  responder returns;
* misbehaves on demand, as the real service and the network can: queued HTTP errors (429, 5xx,
  403), a refused token exchange, projects the credentials may not use, slow answers, answers
  cut off mid-body and answers whose bytes a test writes itself.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
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
_IMAGE_ARGS = ("input", "image", "image1", "value", "collection", "images", "dstImg")

EXTRA_ALGORITHMS: list[dict[str, Any]] = [
    {
        "name": "algorithms/Image.max",
        "description": "Selects the maximum of the first and second values for each matched "
        "pair of bands in image1 and image2. If either image1 or image2 has only 1 band, then "
        "it is used against all the bands in the other image. If the images have the same "
        "number of bands, but not the same names, they're used pairwise in the natural order. "
        "The output bands are named for the longer of the two inputs, or if they're equal in "
        "length, in image1's order. The type of the output pixels is the union of the input "
        "types.",
        "returnType": "Image<unknown bands>",
        "arguments": [
            {
                "argumentName": "image1",
                "type": "Image<unknown bands>",
                "description": "The image from which the left operand bands are taken.",
            },
            {
                "argumentName": "image2",
                "type": "Image<unknown bands>",
                "description": "The image from which the right operand bands are taken.",
            },
        ],
    },
]
"""Signatures served besides ``algorithms.json``, copied unchanged from the recorded list of
earthengine-api 1.7.50 (``ee/tests/algorithms.json``), as the entries of that file are."""


def algorithm_list() -> dict[str, Any]:
    """The answer to ``algorithms.list``: ``algorithms.json`` and :data:`EXTRA_ALGORITHMS`."""
    listed = json.loads((DATA / "algorithms.json").read_text())
    listed["algorithms"] = listed["algorithms"] + EXTRA_ALGORITHMS
    return listed


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
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    """(status, message, reason) answers for the next API calls, one each, before any other."""
    raw_pixels: Callable[[dict[str, Any], list[str], str], bytes] | None = None
    """The bytes of a computePixels answer in place of the NPY of ``pixels``."""
    cut_after: int | None = None
    """Announce the whole body but close the connection after this many bytes."""
    delay_s: float = 0.0
    """Wait this long before answering an API call."""
    token_error: tuple[int, dict[str, Any]] | None = None
    """Refuse the token exchange with this status and JSON body."""
    projects: set[str] | None = None
    """The projects the credentials may use (``None``: all); others get 403."""

    def reset(self) -> None:
        """Forget the requests and the test's answers and misbehaviours."""
        self.requests.clear()
        self.token_requests.clear()
        self.values = {"SCL": 4}
        self.pixels = None
        self.value = None
        self.errors = []
        self.raw_pixels = None
        self.cut_after = None
        self.delay_s = 0.0
        self.token_error = None
        self.projects = None

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
    algorithms = json.dumps(algorithm_list()).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fake.cut_after is not None and status == 200:
                self.wfile.write(body[: fake.cut_after])  # the rest never comes
                self.wfile.flush()
                self.close_connection = True
                return
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
            path = urllib.parse.urlsplit(self.path).path
            project = path.split("/")[3] if path.startswith("/v1/projects/") else None
            if fake.projects is not None and project not in fake.projects:
                self._error(
                    403,
                    f"Caller does not have required permission to use project {project}.",
                    "PERMISSION_DENIED",
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
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout) or the answer was cut on purpose
            except Exception as err:  # noqa: BLE001 - a 400 tells the client, no retries
                self._error(400, f"fake Earth Engine could not answer: {err!r}")

        def _post(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if path == "/token":
                form = dict(urllib.parse.parse_qsl(raw.decode()))
                fake.token_requests.append(form)
                if fake.token_error is not None:
                    status, refusal = fake.token_error
                    self._send(status, json.dumps(refusal).encode())
                    return
                body = {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                self._send(200, json.dumps(body).encode())
                return
            if not self._authorised():
                return
            body = json.loads(raw)
            fake.requests.append({"path": path, "body": body, "headers": dict(self.headers)})
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if fake.errors:
                self._error(*fake.errors.pop(0))
                return
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
                if fake.raw_pixels is not None:
                    answer = fake.raw_pixels(body, bands, dtype)
                else:
                    array = (fake.pixels or fake.default_pixels)(body, bands, dtype)
                    buffer = io.BytesIO()
                    np.save(buffer, array, allow_pickle=False)
                    answer = buffer.getvalue()
                self._send(200, answer, "application/octet-stream")
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
    listed = algorithm_list()["algorithms"]
    fake = FakeEarthEngine(algorithms={a["name"].removeprefix("algorithms/") for a in listed})
    fake.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
