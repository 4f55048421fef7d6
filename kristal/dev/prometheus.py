"""A private Prometheus for tests and benchmarks (Debian's `prometheus` package), scraping a
small exporter the caller controls: `MetricsExporter` serves `/metrics` with the values it is
given, Prometheus scrapes it every second on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kristal.dev.processes import free_port, stop_process


class MetricsExporter:
    """`/metrics` in Prometheus' text format: `set(name, labels, value)` changes what the next
    scrape sees."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def render(self) -> str:
        with self._lock:
            items = list(self._values.items())
        lines = []
        for (name, labels), value in items:
            shown = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{shown}}} {value!r}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class PrometheusProcess:
    pid: int
    url: str


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


def start_prometheus(workdir: Path, target_port: int, *,
                     scrape_interval_s: int = 1) -> PrometheusProcess:
    """Prometheus on a free 127.0.0.1 port with a fresh TSDB under `workdir`, scraping
    `127.0.0.1:<target_port>/metrics`; returns once it answers and has scraped the target."""
    binary = find_prometheus()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {scrape_interval_s}s\n"
        f"  evaluation_interval: {scrape_interval_s}s\n"
        "scrape_configs:\n  - job_name: exporter\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}: "
                               f"{(workdir / 'prometheus.log').read_text()[-2000:]}")
        try:
            if query_values(url, 'up{job="exporter"}') == [1.0]:
                return PrometheusProcess(proc.pid, url)
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(proc.pid)
    raise TimeoutError("prometheus did not scrape its target within 60 s")


def query_values(url: str, query: str) -> list[float]:
    """The sample values of an instant query (for waiting on a scrape)."""
    from urllib.parse import urlencode

    with urllib.request.urlopen(f"{url}/api/v1/query?{urlencode({'query': query})}",
                                timeout=2) as response:
        doc = json.loads(response.read())
    return [float(s["value"][1]) for s in doc["data"]["result"]]
