"""The gateway's OpenAPI document lists the chat routes the hot path answers (FastAPI cannot see them) with
their schemas and the API key schemes, validates as OpenAPI 3.1, and is what /docs loads."""

from __future__ import annotations

import jsonschema
import orjson
from openapi_spec_validator import validate

from chat_common.protocol import ChatCompletion
from gateway.chat import CHAT_PATHS
from tests.gateway.fakes import chat, gateway, model_replica, running


async def test_openapi_documents_the_chat_routes_with_their_schemas_and_the_key_schemes(
    redis_url: str, redis_prefix: str
) -> None:
    replica = model_replica()
    settings = {"auth": "on", "redis_url": redis_url, "redis_prefix": redis_prefix}
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings) as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    validate(document)  # a valid OpenAPI document (client generators and fuzzers read it)
    assert set(CHAT_PATHS) <= set(document["paths"])
    assert {"/v1/models", "/api/chat", "/health"} <= set(document["paths"])  # FastAPI's routes are kept
    openai = document["paths"]["/v1/chat/completions"]["post"]
    assert openai["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(openai["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"401", "403", "503"} <= set(openai["responses"])
    schemas = document["components"]["schemas"]
    assert {"ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", "ErrorResponse"} <= set(schemas)
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer sk-...`",
    }
    assert {"bearer": []} in document["security"]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert docs.status_code == 200 and "/openapi.json" in docs.text


async def test_the_documented_schemas_match_what_the_routes_take_and_give() -> None:
    """The request schema accepts a body the route answers, and the route's answer fits the response schema."""
    replica = model_replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        document = (await client.get("/openapi.json")).json()
        answer = await client.post("/v1/chat/completions", content=chat())
    schemas = document["components"]["schemas"]

    def check(instance: object, name: str) -> None:
        jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}})

    check(orjson.loads(chat()), "ChatCompletionRequest")
    check({"prompt": "hi", "session_id": "s1"}, "FinetuneChatRequest")
    ChatCompletion.model_validate(answer.json())
    check(answer.json(), "ChatCompletion")
    assert "security" not in document  # auth off: no key asked for
