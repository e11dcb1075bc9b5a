"""Switchboard history service: conversations and their messages, in SQLite or MongoDB."""
