"""/proc sampling: CPU and RSS of a process tree, and waiting until a server is idle."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_usage(pids: Sequence[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes summed over ``pids``."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss += int(statm[1]) * PAGE
    return cpu, rss


class Sampler:
    """CPU % and peak RSS of a process tree while a measurement runs."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_percent = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            _, rss = tree_usage(process_tree(self.root))
            self.peak_rss = max(self.peak_rss, rss)

    def __enter__(self) -> Sampler:
        self._pids = process_tree(self.root)
        self._cpu0, self.peak_rss = tree_usage(self._pids)
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu1, rss = tree_usage(process_tree(self.root))
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu_percent = 100 * (cpu1 - self._cpu0) / max(1e-9, time.monotonic() - self._t0)


def settle(pid: int | None, limit: float = 30.0) -> None:
    """Wait until a server is idle again (a slow contender may still be working off the last
    run's requests after wrk closed its connections)."""
    if pid is None:
        return
    deadline = time.monotonic() + limit
    pids = process_tree(pid)
    while time.monotonic() < deadline:
        cpu0, _ = tree_usage(pids)
        time.sleep(0.3)
        cpu1, _ = tree_usage(pids)
        if (cpu1 - cpu0) / 0.3 < 0.05:
            return
