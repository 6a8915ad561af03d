"""What tokens cost at a route's prices.

    cost = ceil(((prompt - cached) * input + cached * cached_input + completion * output) / 1e6)

with prices in micro-credits per 1M tokens, so the result is in micro-credits, rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gateway.money import MICRO, ceil_div

__all__ = ["Prices", "TokenCounts"]


class TokenCounts(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Prices:
    """Micro-credits per 1M tokens."""

    input: int
    output: int
    cached_input: int

    def cost(self, usage: TokenCounts) -> int:
        prompt = max(0, usage.prompt_tokens)
        cached = min(max(0, usage.cached_tokens), prompt)
        completion = max(0, usage.completion_tokens)
        total = (prompt - cached) * self.input + cached * self.cached_input
        total += completion * self.output
        return ceil_div(total, MICRO)

    def exact_cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost before rounding, in millionths of a micro-credit (for ordering routes)."""
        return max(0, prompt_tokens) * self.input + max(0, completion_tokens) * self.output

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> int:
        return self.cost(TokenCounts(prompt_tokens, completion_tokens))

    def prompt_cost(self, prompt_tokens: int) -> int:
        return ceil_div(max(0, prompt_tokens) * self.input, MICRO)

    def affordable_completion(self, budget: int, prompt_tokens: int) -> int:
        """The most completion tokens a budget (micro-credits) pays for after the prompt,
        so that ``cost(prompt, that many) <= budget``."""
        remaining = budget * MICRO - max(0, prompt_tokens) * self.input
        if remaining < 0:
            return 0
        if self.output == 0:
            return 1 << 62
        return remaining // self.output
