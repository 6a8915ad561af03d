"""The benchmark harness behind ``bench/bench.py``, one module per concept.

- ``common``: paths, names and constants shared by all, ``log``, ``Unavailable``
- ``bodies``: the chat request, the upstream's canned answers, SSE counting
- ``processes``: child processes, free ports, waiting for a port, plain HTTP, nginx
- ``sampling``: CPU and RSS of a process tree from ``/proc``, waiting for a server to idle
- ``upstream``: the nginx upstream with its canned answers
- ``contenders``: starting and stopping each contender
- ``load``: wrk runs (its ``BENCHJSON`` line), the smoke check, paced-client runs
- ``results``: a contender's runs in one scenario
- ``tables``: the markdown tables, one per kind of scenario
- ``report``: the whole report, the issue's targets, the machine and versions
- ``options``: the command line
- ``session``: one invocation's state, shared by the scenarios
- ``scenarios``: 1-3 (``chat``), 4 (``paced``), 5 (``big_ledger``)
- ``cli``: ``main``, the order of the scenarios
"""
