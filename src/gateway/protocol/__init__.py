"""How backends speak, read and written: OpenAI's wire shapes (:mod:`~gateway.protocol.wire`),
server-sent events (:mod:`~gateway.protocol.sse`, with runs of text deltas read without
decoding each, :mod:`~gateway.protocol.deltas`), the dialects the relay reads each API through
(:mod:`~gateway.protocol.dialects`), and cutting a complete answer to the tokens paid for
(:mod:`~gateway.protocol.cutting`)."""
