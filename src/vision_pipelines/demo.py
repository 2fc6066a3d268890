"""The demo page: drop a photo, see the model's top classes as bars and which model version said so.

``python -m vision_pipelines demo fruits`` serves, on http://127.0.0.1:5002, one HTML page and
one JSON endpoint (``POST /predict``, ``{"image": "<base64 file>"}``) in front of the registered
model ``models:/fruits@champion``, loaded once as the MLflow pyfunc model the REST server serves,
so the page shows what ``mlflow models serve`` answers. Standard library only (``http.server``):
the page needs no framework, and Gradio would add a large dependency for one upload box.
"""

from __future__ import annotations

import html
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # a photo, base64-encoded, with room to spare

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; color: #222; }}
 #drop {{ display: block; border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; }}
 #drop.over {{ background: #eef; }}
 #photo {{ width: 8rem; display: block; margin: 1rem auto; image-rendering: pixelated; }}
 #photo:not([src]) {{ display: none; }}
 .bar {{ display: flex; align-items: center; margin: .3rem 0; }}
 .bar span {{ width: 12rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
 .bar div {{ background: #4a7bd0; height: 1.2rem; margin-right: .5rem; }}
 #error {{ color: #b00; }}
 #model {{ color: #666; font-size: .9rem; }}
</style></head><body>
<h1>{title}</h1>
<p id="model">model {model}</p>
<label id="drop">Drop a photo here, or click to choose one
 <input id="file" type="file" accept="image/*" hidden></label>
<img id="photo" alt="">
<h2 id="label"></h2>
<div id="bars"></div>
<p id="error"></p>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
drop.addEventListener("dragover", e => {{ e.preventDefault(); drop.classList.add("over"); }});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {{
  e.preventDefault(); drop.classList.remove("over"); classify(e.dataTransfer.files[0]); }});
input.addEventListener("change", () => classify(input.files[0]));
function classify(file) {{
  if (!file) return;
  const reader = new FileReader();
  reader.onload = async () => {{
    document.getElementById("photo").src = reader.result;
    document.getElementById("error").textContent = "";
    const image = reader.result.split(",", 2)[1];
    const answer = await fetch("predict", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                            body: JSON.stringify({{image}})}});
    const result = await answer.json();
    if (!answer.ok) {{ document.getElementById("error").textContent = result.error; return; }}
    document.getElementById("label").textContent = result.classes[0].label;
    document.getElementById("bars").innerHTML = result.classes.map(c =>
      `<div class="bar"><span>${{c.label}}</span><div style="width:${{(c.probability * 20).toFixed(1)}}rem"></div>` +
      `${{(c.probability * 100).toFixed(1)}} %</div>`).join("");
  }};
  reader.readAsDataURL(file);
}}
</script></body></html>
"""


def ranked_classes(row: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"label": ..., "probability": ...}, ...]``, most likely first, from one output row of the model."""
    ranks = [("label", "confidence")] + [(f"label_{r}", f"confidence_{r}") for r in range(2, len(row) // 2 + 1)]
    return [{"label": row[label], "probability": float(row[score])} for label, score in ranks if label in row]


class DemoHandler(BaseHTTPRequestHandler):
    """``GET /``: the page; ``POST /predict``: the top classes of one base64-encoded file."""

    model = None  # the pyfunc model, set by ``serve``
    title = model_name = ""

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/":
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
        page = PAGE.format(title=html.escape(self.title), model=html.escape(self.model_name)).encode()
        self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")

    def do_POST(self) -> None:
        from mlflow.exceptions import MlflowException

        if self.path != "/predict":
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"over {MAX_BODY >> 20} MB"})
        try:
            image = json.loads(self.rfile.read(length))["image"]
            row = self.model.predict(pd.DataFrame({"image": [image]})).iloc[0].to_dict()
        except (ValueError, KeyError, TypeError) as error:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": f'expected {{"image": "<base64 file>"}}: {error}'})
        except MlflowException as error:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": error.message})
        self._send(HTTPStatus.OK, {"model": self.model_name, "classes": ranked_classes(row)})

    def _send(self, status: HTTPStatus, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


def serve(model, title: str, model_name: str, host: str, port: int) -> None:
    """Serve the page for ``model`` (a loaded pyfunc model) until interrupted."""
    handler = type("Handler", (DemoHandler,), {"model": model, "title": title, "model_name": model_name})
    server = ThreadingHTTPServer((host, port), handler)
    log.info("demo page for %s on http://%s:%d/ (Ctrl-C stops it)", model_name, host, server.server_address[1])
    print(f"demo page: http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
