"""The request path: admit a request, reserve what it may cost, forward it to the cheapest
healthy backend (failing over), meter its answer as it streams, settle it.

- :mod:`~gateway.proxy.endpoints`: the metered endpoints, and what a request asks for;
- :mod:`~gateway.proxy.relay`: the path itself, from admission to the last byte;
- :mod:`~gateway.proxy.metering` and :mod:`~gateway.proxy.settlement`: what a request
  consumed, and charging it once, however it ends;
- :mod:`~gateway.proxy.routing`, :mod:`~gateway.proxy.breaker`: which backend serves;
- :mod:`~gateway.proxy.upstream` (and the built-in :mod:`~gateway.proxy.demo` supplier): the
  backends over HTTP;
- :mod:`~gateway.proxy.leases`, :mod:`~gateway.proxy.ratelimit`: the reservations this process
  keeps alive, and the rpm/tpm limits (in process, or shared through Redis).
"""
