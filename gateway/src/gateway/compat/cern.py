"""The Cern chat backend's API (seed 000), kept working through the gateway.

``POST /api/chat`` takes ``{"history": [{"role", "content"}], "user_prompt"}`` and answers
``{"cern_response", "thought_process"}``: the answer of the ``GATEWAY_CERN_PROFILE`` profile with its
reasoning (the text between the profile's reasoning tags; ``""`` when the model did not reason) split
out, and its guardrail applied (a banned phrase makes ``cern_response`` the profile's fallback message
and ``thought_process`` empty). History roles other than ``user`` and ``system`` (``cern``,
``assistant``, anything else the frontend uses for the persona) are the assistant's turns. The seed
defines no error shape, so errors are in OpenAI's envelope.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from chat_common.errors import APIError, validation_message
from chat_common.requests import chat_request, json_object
from gateway.answer import count_chat, model_answer
from gateway.auth import allow_model
from gateway.limits import admit_chat
from gateway.profile_filter import ProfileFilter
from gateway.profiles import Profile, Profiles
from gateway.proxy import EventStream, Proxy

__all__ = ["CHAT_PATH", "router"]

router = APIRouter(tags=["Cern compatibility"])

CHAT_PATH = "/api/chat"


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str


class CernChat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    history: list[Turn] = Field(default_factory=list)
    user_prompt: Annotated[str, Field(min_length=1)]


def _role(role: str) -> str:
    return role if role in ("user", "system") else "assistant"


def _profile(request: Request) -> Profile:
    name = request.app.state.settings.cern_profile
    profiles: Profiles = request.app.state.profiles
    profile = profiles.get(name)
    if profile is None:
        raise APIError(
            404,
            f"POST {CHAT_PATH} is answered by the profile '{name}' (GATEWAY_CERN_PROFILE), which is not in "
            "GATEWAY_PROFILES_FILE. Add it there (see deploy/profiles.yaml) or point the setting at a profile.",
            code="profile_not_found",
        )
    return profile


@router.post(CHAT_PATH)
async def chat(request: Request) -> Response:
    started = time.perf_counter()
    data = json_object(await request.body(), "with 'user_prompt' and 'history'")
    try:
        ask = CernChat.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False)))
        raise APIError(400, message, param=param, code="invalid_value") from None
    profile = _profile(request)
    allow_model(request.scope, profile.id)
    messages = [{"role": _role(t.role), "content": t.content} for t in ask.history]
    messages.append({"role": "user", "content": ask.user_prompt})
    body = profile.apply({"messages": messages, "stream": False})
    chat_req = chat_request(body)
    admission = await admit_chat(request.app.state, request.scope, chat_req.model, body["messages"])
    proxy: Proxy = request.app.state.proxy
    profile_filter = ProfileFilter(profile, profile.id, proxy.metrics)
    body = profile_filter.request(body, proxy.registry)
    response = await model_answer(proxy, chat_req, orjson.dumps(body), [profile_filter], admission)
    count_chat(proxy, chat_req.model, response.status_code, False, started)
    assert not isinstance(response, EventStream)
    admission.finish()  # the token charge corrected: the answer is whole, its usage known
    if response.status_code != 200:
        return response
    message = orjson.loads(response.body)["choices"][0]["message"]
    answer = JSONResponse(
        {
            "cern_response": (message.get("content") or "").strip(),
            "thought_process": (message.get("reasoning_content") or "").strip(),
        },
    )
    answer.raw_headers.extend(admission.headers)
    return answer
