"""Cutting a complete answer down to the generated tokens that were paid for.

Every request goes upstream with a bound its reservation pays for; a backend that generates past
it anyway (it ignores the bound, reads another field, or counts differently) must not deliver
the rest. A stream is cut off event by event (:mod:`gateway.proxy.relay`); a complete answer is cut
here, each choice's generated text kept in the order it was generated (reasoning, then the
answer, a refusal, tool calls, the transcript of generated audio) up to the tokens paid for, and
marked as cut short by the bound, as a backend would mark it: ``finish_reason: "length"`` for
chat and completions, ``status: "incomplete"`` for the Responses API.

The answers are decoded JSON (dicts): a cut is rare, and whatever the answer carries beside the
text (ids, logprobs, annotations, vendor fields) is kept as it came.
"""

from __future__ import annotations

from typing import Any

from gateway.tokens import TokenCounter

__all__ = ["cut_choices", "cut_output"]

#: A chat message's fields of generated text, in the order they are generated.
_MESSAGE_TEXTS = ("reasoning", "reasoning_content", "content", "refusal")


class _Budget:
    """Tokens left to keep, spent text by text. The texts kept are counted together, as the
    meter counts a choice's texts (a token may span two of them)."""

    def __init__(self, keep: int, counter: TokenCounter) -> None:
        self.keep = keep
        self.cut = False
        self._counter = counter
        self._kept = ""

    def take(self, text: object) -> object:
        """``text`` as far as the budget pays for it (anything not a string as is)."""
        if not isinstance(text, str) or not text:
            return text
        joined = self._kept + text
        if self._counter.count_text(joined) <= self.keep:
            self._kept = joined
            return text
        self.cut = True
        prefix = self._counter.prefix(joined, self.keep)
        kept = prefix[len(self._kept) :] if prefix.startswith(self._kept) else ""
        self._kept += kept
        return kept

    @property
    def spent(self) -> bool:
        return self.cut or self._counter.count_text(self._kept) >= self.keep


def cut_choices(answer: dict[str, Any], keep: int, counter: TokenCounter) -> bool:
    """Cut each choice of a chat completion or legacy completion to ``keep`` generated tokens;
    True if any was cut."""
    cut = False
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        budget = _Budget(keep, counter)
        if "text" in choice:  # a legacy completion
            choice["text"] = budget.take(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            _cut_message(message, budget)
        if budget.cut:
            choice["finish_reason"] = "length"
            cut = True
    return cut


def _cut_message(message: dict[str, Any], budget: _Budget) -> None:
    for name in _MESSAGE_TEXTS:
        if name in message:
            message[name] = budget.take(message[name])
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        kept = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                kept.append(call)
                continue
            if budget.spent and (function.get("name") or function.get("arguments")):
                budget.cut = True
                break
            function["name"] = budget.take(function.get("name"))
            function["arguments"] = budget.take(function.get("arguments"))
            kept.append(call)
        message["tool_calls"] = kept or None
    function = message.get("function_call")
    if isinstance(function, dict):
        function["name"] = budget.take(function.get("name"))
        function["arguments"] = budget.take(function.get("arguments"))
    audio = message.get("audio")
    if isinstance(audio, dict) and "transcript" in audio:
        audio["transcript"] = budget.take(audio["transcript"])


def cut_output(response: dict[str, Any], keep: int, counter: TokenCounter) -> bool:
    """Cut a Responses API ``response`` to ``keep`` generated tokens in all (its output items in
    order; an item begun past the budget is left out); True if anything was cut."""
    output = response.get("output")
    if not isinstance(output, list):
        return False
    budget = _Budget(keep, counter)
    kept: list[Any] = []
    for item in output:
        if not isinstance(item, dict):
            kept.append(item)
            continue
        if budget.spent and _has_text(item):
            budget.cut = True
            break
        was = budget.cut
        for name in ("name", "arguments", "input", "code"):  # tool calls
            if name in item and (name != "name" or "call" in str(item.get("type"))):
                item[name] = budget.take(item[name])
        for key in ("summary", "content"):  # reasoning summaries and text, message parts
            parts = item.get(key)
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict):
                        for name in ("text", "refusal"):
                            if name in part:
                                part[name] = budget.take(part[name])
        if budget.cut and not was and "status" in item:
            item["status"] = "incomplete"
        kept.append(item)
    if not budget.cut:
        return False
    response["output"] = kept
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": "max_output_tokens"}
    return True


def _has_text(item: dict[str, Any]) -> bool:
    """Whether an output item carries generated text (not, say, an empty reasoning item)."""
    if any(isinstance(item.get(name), str) and item[name] for name in ("arguments", "input")):
        return True
    for key in ("summary", "content"):
        for part in item.get(key) or ():
            if isinstance(part, dict) and (part.get("text") or part.get("refusal")):
                return True
    return False
