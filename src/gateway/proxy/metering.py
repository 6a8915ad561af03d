"""Measuring what a request consumed, on the fly.

Usage the upstream reports is authoritative, after sanity checks: a negative or missing field
falls back to our own count. Where the upstream reports nothing, the prompt is counted with
tiktoken (OpenAI's message recipe) and the completion from every text the upstream generated
(:func:`gateway.protocol.wire.message_texts`), per choice. Either way the completion is
trusted up to what the reservation pays for, never beyond: the backend was told not to generate
more, and whatever text it sent past that was not delivered (a stream is cut off, a complete
answer cut). A count above it, hidden reasoning say, is charged as far as the reservation pays.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.pricing import Prices, TokenCounts
from gateway.protocol.dialects import ReportedUsage, Texts
from gateway.tokens import TokenCounter

__all__ = ["Meter"]


class Meter:
    def __init__(
        self,
        counter: TokenCounter,
        prices: Prices,
        *,
        prompt_tokens: int,
    ) -> None:
        self._counter = counter
        self.prices = prices
        self.prompt_estimate = prompt_tokens
        self._texts: dict[int, list[str]] = {}
        self.reported: ReportedUsage | None = None
        #: Completion tokens generated so far, counted piece by piece (for cut-off decisions).
        self.running_completion = 0
        self._budget = -1  # the reservation :meth:`fits` last saw, and what it pays for
        self._affordable = 0

    @property
    def counter(self) -> TokenCounter:
        return self._counter

    def peek(self, texts: Texts) -> int:
        """The completion tokens these pieces of text would add (nothing is recorded)."""
        return sum(self._counter.count_text(text) for _, text in texts)

    @staticmethod
    def peek_bound(texts: Texts) -> int:
        """An upper bound of :meth:`peek` at no tokenizing cost: a token is at least one
        byte of UTF-8, so a text has at most as many tokens as bytes."""
        if len(texts) == 1:
            return len(texts[0][1].encode())
        return sum(len(text.encode()) for _, text in texts)

    def recount(self) -> None:
        """Replace the running count (perhaps upper bounds) by the exact count so far."""
        self.running_completion = self.counted_completion()

    def record(self, texts: Texts, added: int) -> None:
        """Record generated text that was passed on; ``added`` is what :meth:`peek` (or
        :meth:`peek_bound`) said."""
        _add_by_choice(self._texts, texts)
        self.running_completion += added

    def record_all(self, run: Sequence[tuple[int, str]], reserved: int) -> bool:
        """Record all the (choice index, text) pieces of ``run`` (one per event, perhaps
        empty) if ``reserved`` surely pays for them, else nothing: by their
        :meth:`peek_bound`, or, near the reservation, by the exact count of everything
        generated so far with the run (the running count becomes exact)."""
        texts = tuple(piece for piece in run if piece[1])
        bound = self.peek_bound(texts) if texts else 0
        if not texts or self.fits(bound, reserved):
            self.record(texts, bound)
            return True
        added = self._exact_with(texts) - self.running_completion
        if self.fits(added, reserved):
            self.record(texts, added)
            return True
        return False

    def record_run(self, run: Sequence[tuple[int, str]], reserved: int) -> int:
        """Record the pieces that open ``run`` as far as ``reserved`` surely pays for them;
        return how many. Usually all of them, at once (:meth:`record_all`); else, from the
        exact count so far, as far as their bounds fit, as :meth:`fits` and :meth:`record`
        one by one would: the relay takes the rest event by event."""
        if self.record_all(run, reserved):
            return len(run)
        self.recount()
        count = total = 0  # at the reservation: piece by piece
        for _, text in run:
            size = len(text.encode())
            if size and not self.fits(total + size, reserved):
                break
            total += size
            count += 1
        self.record(tuple(piece for piece in run[:count] if piece[1]), total)
        return count

    def fits(self, extra_completion: int, reserved: int) -> bool:
        """Whether ``cost_with(extra_completion) <= reserved``, by one comparison of token
        counts (what the reservation pays for is worked out once per reservation)."""
        if reserved != self._budget:
            self._budget = reserved
            prices, prompt = self.prices, self.prompt_estimate
            self._affordable = (
                self.paid_completion(reserved)
                if prices.prompt_cost(prompt) <= reserved
                else -1  # not even the prompt is paid for
            )
        return self.running_completion + extra_completion <= self._affordable

    def paid_completion(self, reserved: int) -> int:
        """The completion tokens ``reserved`` pays for after the estimated prompt."""
        prices, prompt = self.prices, self.prompt_estimate
        if prices.prompt_cost(prompt) > reserved:
            return 0
        return prices.affordable_completion(reserved, prompt)

    def cost_with(self, extra_completion: int = 0) -> int:
        """What the request costs so far (plus ``extra_completion`` tokens), on our count."""
        return self.prices.cost_of(self.prompt_estimate, self.running_completion + extra_completion)

    def _exact_with(self, texts: Texts) -> int:
        """:meth:`counted_completion` as it would be with ``texts`` recorded."""
        parts = {index: list(pieces) for index, pieces in self._texts.items()}
        _add_by_choice(parts, texts)
        return sum(self._counter.count_text("".join(pieces)) for pieces in parts.values())

    def counted_completion(self) -> int:
        """Completion tokens counted from the generated text, choice by choice."""
        return sum(self._counter.count_text("".join(parts)) for parts in self._texts.values())

    def usage(self, reserved: int) -> TokenCounts:
        """Final usage: the upstream's report where sane, else our count; the completion no
        more than ``reserved`` (the reservation as it ends) pays for."""
        report = self.reported or ReportedUsage()
        prompt = _sane(report.prompt_tokens)
        completion = _sane(report.completion_tokens)
        cached = _sane(report.cached_tokens) or 0
        if prompt is None:
            prompt = self.prompt_estimate
        if completion is None:
            completion = self.counted_completion()
        completion = min(completion, self.paid_completion(reserved))
        return TokenCounts(prompt, completion, min(cached, prompt))

    def cost(self, usage: TokenCounts) -> int:
        return self.prices.cost(usage)


def _add_by_choice(parts: dict[int, list[str]], texts: Texts) -> None:
    """Append each (choice index, text) of ``texts`` to its choice's list in ``parts``."""
    for index, text in texts:
        found = parts.get(index)
        if found is None:
            parts[index] = [text]
        else:
            found.append(text)


def _sane(value: int | None) -> int | None:
    if value is None or value < 0 or value > 1 << 40:
        return None
    return value
