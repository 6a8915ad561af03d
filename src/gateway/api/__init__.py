"""HTTP handlers: the OpenAI-compatible client API, the admin API and operations."""
