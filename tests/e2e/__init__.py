"""End-to-end tests: the real gateway process, driven over HTTP with the openai SDK and httpx."""
