"""Shared by every Switchboard service: the OpenAI wire protocol, the error envelope, SSE framing,
request context, JSON logging and metrics exposition. It never imports a service."""
