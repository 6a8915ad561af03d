"""OpenAI's Responses API (``POST /v1/responses``): relayed to a backend that speaks it, or
translated into chat completions for one that does not.

- :mod:`~gateway.responses_api.dialects`: the two dialects the relay speaks it in;
- :mod:`~gateway.responses_api.chat_request`: a Responses request as a chat completion;
- :mod:`~gateway.responses_api.chat_answer`: a chat completion (or its stream) as the
  Responses API's answer.
"""

from gateway.responses_api.dialects import ChatTranslation, NativeResponses, responses_dialect

__all__ = ["ChatTranslation", "NativeResponses", "responses_dialect"]
