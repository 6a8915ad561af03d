"""Which backend serves a request: the routes for its model, cheapest first for this request,
skipping backends whose circuit is open."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import BackendConfig, Config
from gateway.pricing import Prices
from gateway.proxy.breaker import CircuitBreaker
from gateway.tokens import resolve_encoding

__all__ = ["Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    backend: BackendConfig
    upstream_model: str
    prices: Prices
    encoding: str
    order: int  # position in the config: ties in price keep config order

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What a request of this size would cost here, before rounding (for ordering)."""
        return self.prices.exact_cost(prompt_tokens, completion_tokens)


class Router:
    def __init__(self, config: Config) -> None:
        self._routes: dict[str, list[Route]] = {}
        for order, rc in enumerate(config.routes):
            route = Route(
                model=rc.model,
                backend=config.backend(rc.backend),
                upstream_model=rc.target_model,
                prices=Prices(rc.input_micro, rc.output_micro, rc.cached_micro),
                encoding=resolve_encoding(rc.tokenizer, rc.target_model, rc.model),
                order=order,
            )
            self._routes.setdefault(rc.model, []).append(route)
        self.breakers = {
            b.name: CircuitBreaker(
                b.name,
                failure_threshold=config.routing.failure_threshold,
                cooldown_s=config.routing.cooldown_s,
            )
            for b in config.backends
        }

    @property
    def models(self) -> list[str]:
        return list(self._routes)

    def routes(self, model: str) -> list[Route]:
        """Every route for a model, in config order (empty for an unknown model)."""
        return self._routes.get(model, [])

    def ranked(self, model: str, prompt_tokens: int, completion_tokens: int) -> list[Route]:
        """Routes ordered by what this request would cost at each one's prices."""
        return sorted(
            self.routes(model),
            key=lambda r: (r.estimate(prompt_tokens, completion_tokens), r.order),
        )

    def breaker(self, route: Route) -> CircuitBreaker:
        return self.breakers[route.backend.name]
