"""Measuring what a request consumed, on the fly.

Usage the upstream reports is authoritative, after sanity checks: a negative or missing field
falls back to our own count, and a completion count above the bound the gateway asked for is
capped at that bound (the upstream was told not to generate more). Where the upstream reports
nothing, the prompt is counted with tiktoken (OpenAI's message recipe) and the completion from
the text the upstream generated, per choice.
"""

from __future__ import annotations

from gateway import wire
from gateway.pricing import Prices, TokenUsage
from gateway.tokens import TokenCounter

__all__ = ["Meter"]


class Meter:
    def __init__(
        self,
        counter: TokenCounter,
        prices: Prices,
        *,
        prompt_tokens: int,
        completion_cap: int | None,
    ) -> None:
        self._counter = counter
        self.prices = prices
        self.prompt_estimate = prompt_tokens
        self._cap = completion_cap
        self._texts: dict[int, list[str]] = {}
        self.reported: wire.Usage | None = None
        #: Completion tokens generated so far, counted delta by delta (for cut-off decisions).
        self.running_completion = 0

    # -- feeding -------------------------------------------------------------------------
    def peek(self, chunk: wire.Chunk) -> int:
        """The completion tokens a streamed chunk would add (nothing is recorded)."""
        added = 0
        for choice in chunk.choices or ():
            if choice.delta is not None:
                for text in wire.message_texts(choice.delta):
                    added += self._counter.count_text(text)
            if choice.text:
                added += self._counter.count_text(choice.text)
        return added

    def observe_chunk(self, chunk: wire.Chunk, added: int) -> None:
        """Record a streamed chunk that was passed on; ``added`` is what :meth:`peek` said."""
        if chunk.usage is not None:
            self.reported = chunk.usage
        for choice in chunk.choices or ():
            texts = wire.message_texts(choice.delta) if choice.delta is not None else []
            if choice.text:
                texts.append(choice.text)
            if texts:
                self._texts.setdefault(choice.index, []).extend(texts)
        self.running_completion += added

    def observe_answer(self, answer: wire.Answer) -> None:
        self.reported = answer.usage
        for choice in answer.choices or ():
            texts = wire.message_texts(choice.message) if choice.message is not None else []
            if choice.text:
                texts.append(choice.text)
            self._texts.setdefault(choice.index, []).extend(texts)

    # -- results -------------------------------------------------------------------------
    def cost_with(self, extra_completion: int = 0) -> int:
        """What the request costs so far (plus ``extra_completion`` tokens), on our count."""
        return self.prices.cost_of(self.prompt_estimate, self.running_completion + extra_completion)

    def counted_completion(self) -> int:
        """Completion tokens counted from the generated text, choice by choice."""
        return sum(self._counter.count_text("".join(parts)) for parts in self._texts.values())

    def usage(self) -> TokenUsage:
        """Final usage: the upstream's report where sane, else our count."""
        reported = self.reported
        prompt = _sane(reported.prompt_tokens if reported else None)
        completion = _sane(reported.completion_tokens if reported else None)
        details = reported.prompt_tokens_details if reported else None
        cached = _sane(details.cached_tokens if details else None) or 0
        if prompt is None:
            prompt = self.prompt_estimate
        if completion is None:
            completion = self.counted_completion()
        if self._cap is not None:
            completion = min(completion, self._cap)
        return TokenUsage(prompt, completion, min(cached, prompt))

    def delivered_usage(self) -> TokenUsage:
        """Usage of what was delivered when a stream ended early (no final report): the
        estimated prompt and the counted completion."""
        completion = self.counted_completion()
        if self._cap is not None:
            completion = min(completion, self._cap)
        return TokenUsage(self.prompt_estimate, completion, 0)

    def cost(self, usage: TokenUsage) -> int:
        return self.prices.cost(usage)


def _sane(value: int | None) -> int | None:
    if value is None or value < 0 or value > 1 << 40:
        return None
    return value
