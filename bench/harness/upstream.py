"""The upstream: nginx, one worker, answering canned JSON and SSE bodies."""

from __future__ import annotations

from dataclasses import dataclass

from .bodies import completion_json, sse_body
from .common import HOST, RUN
from .processes import Proc, free_port, start_nginx, wait_port


@dataclass
class Upstream:
    """A running upstream: ``base(kind)`` is an OpenAI base url (``.../v1``)."""

    port: int
    proc: Proc
    prefixes: dict[str, str]  # kind ("json", "sse", "paced") -> path prefix

    def base(self, kind: str) -> str:
        return f"http://{HOST}:{self.port}{self.prefixes[kind]}"


def start_upstream() -> Upstream:
    docroot = RUN / "nginx" / "upstream-doc"
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "sse.txt").write_text(sse_body())
    body = completion_json()
    assert "'" not in body, "the body goes into a single-quoted nginx string"
    assert "$" not in body, "nginx would read $ as a variable"
    models = '{"object":"list","data":[{"id":"bench-model","object":"model","owned_by":"bench"}]}'
    port = free_port()
    servers = f"""
    server {{
        listen {HOST}:{port} backlog=4096;
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 '{body}';
        }}
        location = /sse/v1/chat/completions {{
            # static files refuse POST (405): answer it with the file all the same
            alias {docroot}/sse.txt;
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
        location ~ ^/(json|sse)/v1/models$ {{
            default_type application/json;
            return 200 '{models}';
        }}
    }}"""
    proc = start_nginx("upstream", servers)
    wait_port(port, proc, 10)
    return Upstream(port, proc, {"json": "/json/v1", "sse": "/sse/v1"})
