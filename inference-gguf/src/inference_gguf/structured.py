"""``response_format`` for GGUF models: the answer is constrained by a llama.cpp grammar (GBNF), so it parses.

- ``{"type": "text"}`` (or no field): no constraint;
- ``{"type": "json_object"}``: any JSON object;
- ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``: JSON valid against the schema,
  converted to a grammar by llama-cpp-python's schema converter (the one llama.cpp's server uses).

Anything else is a 400 naming ``response_format``. An answer cut short by ``max_tokens`` is incomplete JSON
and says so with ``finish_reason: "length"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chat_common.errors import APIError
from chat_common.generation import Sequence

__all__ = ["JSON_OBJECT_GBNF", "GrammarSequence", "grammar_for"]

# Any JSON object: llama.cpp's json.gbnf, with the root restricted to an object.
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [1-9] [0-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""


@dataclass(eq=False)
class GrammarSequence(Sequence):
    """A sequence whose tokens must follow ``grammar`` (GBNF, root rule ``root``)."""

    grammar: str | None = None


def _bad(message: str) -> APIError:
    return APIError(400, message, param="response_format", code="invalid_response_format")


def grammar_for(response_format: Any) -> str | None:
    """The GBNF grammar for a request's ``response_format``; None for plain text. Raises a 400 APIError."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise _bad('response_format must be an object such as {"type": "json_object"}.')
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise _bad("response_format.json_schema must be an object with a 'schema' object.")
        schema = spec.get("schema") or {"type": "object"}
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:  # the converter raises assorted errors for what it cannot express
            raise _bad(f"response_format.json_schema.schema cannot be turned into a grammar: {exc}") from exc
    raise _bad(f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}.")
