from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import FastAPI

from chat_common.context import access_fields, request_id
from chat_common.errors import APIError, install_error_handlers
from chat_common.middleware import DISCOVERY_USER_AGENT, RequestContextMiddleware


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/echo")
    async def echo() -> dict[str, str | None]:
        access_fields()["model"] = "m1"
        return {"request_id": request_id()}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fail")
    async def fail() -> None:
        raise APIError(429, "slow down", headers={"Retry-After": "3"})

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    app.add_middleware(RequestContextMiddleware)
    return app


async def _get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


async def test_request_id_is_kept_returned_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="access")
    response = await _get("/echo", {"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert response.json() == {"request_id": "req-42"}
    record = next(r for r in caplog.records if r.name == "access")
    assert (record.status, record.route, record.model) == (200, "/echo", "m1")  # type: ignore[attr-defined]
    assert record.latency_ms >= 0  # type: ignore[attr-defined]


async def test_probes_and_model_discovery_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="access")
    await _get("/echo", {"User-Agent": DISCOVERY_USER_AGENT})  # the gateway's periodic GET /v1/models
    await _get("/echo", {"User-Agent": "python-httpx"})  # anyone else
    await _get("/health")
    await _get("/fail", {"User-Agent": DISCOVERY_USER_AGENT})  # an error is never quiet
    levels = [(r.route, r.levelno) for r in caplog.records if r.name == "access"]  # type: ignore[attr-defined]
    assert levels == [
        ("/echo", logging.DEBUG),
        ("/echo", logging.INFO),
        ("/health", logging.DEBUG),
        ("/fail", logging.INFO),
    ]


@pytest.mark.parametrize("bad", ["", "x" * 200, "has space", "semi;colon"])
async def test_an_unusable_request_id_is_replaced(bad: str) -> None:
    response = await _get("/echo", {"X-Request-ID": bad})
    assert response.headers["x-request-id"] != bad
    assert len(response.headers["x-request-id"]) == 32


async def test_errors_use_the_openai_envelope_and_keep_headers() -> None:
    response = await _get("/fail")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}
    }


async def test_unexpected_errors_hide_internals() -> None:
    response = await _get("/crash")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["type"] == "server_error"


async def test_unknown_route_is_an_enveloped_404() -> None:
    response = await _get("/nowhere")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_json_log_lines_carry_service_and_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    from chat_common.logging import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("unit-test", "INFO")
        logging.getLogger("x").info("hello", extra={"model": "m"})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["service"] == "unit-test" and line["message"] == "hello" and line["model"] == "m"
    assert "request_id" in line
