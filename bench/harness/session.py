"""One invocation's state, shared by the scenarios: the options, the results so far, and how
to start a contender and wait until it answers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from .common import Unavailable
from .contenders import Contender, Direct, Gateway, LiteLLM, NginxProxy, Relay, Target
from .load import smoke
from .options import Options
from .results import Results, Row


class Session:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.results: Results = {}
        self.load_before = (0.0, 0.0, 0.0)

    def contender(self, name: str) -> Contender:
        factories: dict[str, Callable[[], Contender]] = {
            "direct": Direct,
            "nginx": NginxProxy,
            "relay": Relay,
            "gateway": Gateway,
            "baseline": lambda: Gateway(tag="baseline", src=self.opts.baseline),
            "litellm": lambda: LiteLLM(self.opts.litellm),
        }
        return factories[name]()

    def row(self, scenario: str, name: str) -> Row:
        return self.results.setdefault(scenario, {}).setdefault(name, Row())

    @contextlib.contextmanager
    def started(self, contender: Contender, base_url: str, upstream_pid: int) -> Iterator[Target]:
        try:
            target = contender.start(base_url, upstream_pid)
            yield target
        finally:
            contender.stop()

    def ready(self, target: Target, stream: bool, timeout: float = 60.0) -> int:
        """Retry the smoke request until the contender answers (LiteLLM warms up slowly)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return smoke(target, stream)
            except (Unavailable, OSError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(str(exc)) from exc
                time.sleep(0.5)
