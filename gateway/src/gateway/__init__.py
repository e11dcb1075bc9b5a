"""Switchboard API gateway: one OpenAI-compatible API in front of every model service."""
