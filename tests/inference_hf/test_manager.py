"""Model lifecycle with a fake loader at the engine boundary: on-demand loads, LRU eviction under the
loaded-models limit, 503 when every loaded model is busy, 409 on unloading a busy model, keep-alive."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from chat_common.errors import APIError
from inference_hf.catalog import ModelSpec
from inference_hf.manager import ModelManager


@dataclass
class _Info:
    memory_bytes: int = 1000
    context_length: int = 2048
    device: str = "cpu"
    dtype: str = "float32"
    quantization: str = "none"
    batching: str = "continuous"
    is_encoder_decoder: bool = False


class FakeLoader:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.gate: threading.Event | None = None

    def load(self, spec: ModelSpec, location: str, *, max_batch_size: int, auto_8bit_above_bytes: float) -> _Info:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(("load", spec.id))
        if spec.id in self.fail:
            raise RuntimeError("out of memory")
        self.loaded.append(spec.id)
        return _Info()

    def unload(self, model_id: str) -> None:
        self.calls.append(("unload", model_id))
        self.loaded.remove(model_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _manager(
    loader: FakeLoader, *ids: str, max_loaded: int = 2, keep_alive_s: float = 60, clock: Clock | None = None
) -> ModelManager:
    specs = [ModelSpec(id=i, source=f"/models/{i}") for i in ids]
    return ModelManager(
        specs,
        loader,
        cache_dir=Path("/nowhere"),
        max_loaded=max_loaded,
        keep_alive_s=keep_alive_s,
        max_batch_size=8,
        auto_8bit_above_bytes=4e9,
        retry_after_s=1,
        clock=clock or Clock(),
    )


async def test_start_preloads_what_fits() -> None:
    loader = FakeLoader()
    manager = _manager(loader, "a", "b", "c")
    assert manager.readiness()[0] == "starting"
    await manager.start()
    assert loader.loaded == ["a", "b"]  # c loads on first use
    assert manager.readiness() == ("ready", "")
    cards = manager.cards()
    assert [c["id"] for c in cards] == ["a", "b", "c"]
    assert [c["state"]["loaded"] for c in cards] == [True, True, False]
    assert cards[0]["state"]["memory_bytes"] == 1000 and cards[2]["state"]["memory_bytes"] == 0


async def test_a_request_loads_the_model_evicting_the_least_recently_used_idle_one() -> None:
    loader, clock = FakeLoader(), Clock()
    manager = _manager(loader, "a", "b", "c", clock=clock)
    await manager.start()
    clock.now += 1
    lease_a = await manager.acquire("a")  # a is now more recent than b
    lease_a.release()
    clock.now += 1
    lease_c = await manager.acquire("c")
    assert loader.loaded == ["a", "c"] and ("unload", "b") in loader.calls
    assert manager.state("c").in_flight == 1
    lease_c.release()
    lease_c.release()  # idempotent
    assert manager.state("c").in_flight == 0


async def test_503_when_every_loaded_model_is_busy() -> None:
    loader = FakeLoader()
    manager = _manager(loader, "a", "b", "c")
    await manager.start()
    leases = [await manager.acquire("a"), await manager.acquire("b")]
    with pytest.raises(APIError) as err:
        await manager.acquire("c")
    assert err.value.status_code == 503 and err.value.code == "models_busy"
    assert "Retry-After" in err.value.headers and "INFERENCE_HF_MAX_LOADED_MODELS=2" in err.value.message
    leases[1].release()
    (await manager.acquire("c")).release()
    assert loader.loaded == ["a", "c"]


async def test_unload_busy_model_is_409_and_idle_unload_is_idempotent() -> None:
    loader = FakeLoader()
    manager = _manager(loader, "a")
    await manager.start()
    lease = await manager.acquire("a")
    with pytest.raises(APIError) as err:
        await manager.unload("a")
    assert err.value.status_code == 409 and err.value.code == "model_busy"
    lease.release()
    assert (await manager.unload("a")).status == "unloaded"
    assert (await manager.unload("a")).status == "unloaded"
    assert loader.calls.count(("unload", "a")) == 1


async def test_keep_alive_unloads_idle_models_only() -> None:
    loader, clock = FakeLoader(), Clock()
    manager = _manager(loader, "a", "b", keep_alive_s=30, clock=clock)
    manager.states["b"].keep_alive_s = -1  # never
    await manager.start()
    lease = await manager.acquire("a")
    clock.now += 100
    assert await manager.unload_idle() == []  # a request is in flight
    lease.release()
    clock.now += 29
    assert await manager.unload_idle() == []
    clock.now += 1
    assert await manager.unload_idle() == ["a"]
    assert loader.loaded == ["b"]


async def test_unknown_model_is_404_listing_the_configured_ids() -> None:
    manager = _manager(FakeLoader(), "a", "b")
    for call in (manager.acquire("zzz"), manager.load("zzz"), manager.unload("zzz")):
        with pytest.raises(APIError) as err:
            await call
        assert err.value.status_code == 404 and "Available models: a, b." in err.value.message


async def test_failed_load_is_503_and_reported_by_ready() -> None:
    loader = FakeLoader()
    loader.fail.add("a")
    manager = _manager(loader, "a")
    await manager.start()
    status, reason = manager.readiness()
    assert status == "failed" and "out of memory" in reason
    with pytest.raises(APIError) as err:
        await manager.acquire("a")
    assert err.value.status_code == 503 and err.value.code == "model_load_failed"
    loader.fail.clear()
    (await manager.acquire("a")).release()  # a later request tries again
    assert manager.readiness() == ("ready", "")


async def test_concurrent_requests_share_one_load() -> None:
    loader = FakeLoader()
    manager = _manager(loader, "a")
    loader.gate = threading.Event()
    tasks = [asyncio.create_task(manager.acquire("a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert manager.state("a").status == "loading"
    loader.gate.set()
    leases = await asyncio.gather(*tasks)
    assert loader.calls == [("load", "a")] and manager.state("a").in_flight == 3
    for lease in leases:
        lease.release()


async def test_a_model_being_prepared_answers_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import inference_hf.manager as manager_module

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    release = threading.Event()

    def slow_prepare(path: Path, cache_dir: Path, *, progress: object) -> Path:
        release.wait(10)
        return cache_dir / path.stem

    monkeypatch.setattr(manager_module, "prepare_gguf", slow_prepare)
    loader = FakeLoader()
    manager = ModelManager(
        [ModelSpec(id="g", gguf=str(gguf))],
        loader,
        cache_dir=tmp_path / "cache",
        max_loaded=1,
        keep_alive_s=60,
        max_batch_size=8,
        auto_8bit_above_bytes=4e9,
        retry_after_s=1,
    )
    start = asyncio.create_task(manager.start())
    await asyncio.sleep(0.05)
    assert manager.card("g")["state"]["status"] == "preparing"
    with pytest.raises(APIError) as err:
        await manager.acquire("g")
    assert err.value.status_code == 503 and err.value.code == "model_preparing"
    assert err.value.headers["Retry-After"] == "5"
    release.set()
    await start
    assert loader.loaded == ["g"] and manager.readiness() == ("ready", "")


async def test_during_start_a_loading_model_answers_503_and_later_loads_wait() -> None:
    loader = FakeLoader()
    loader.gate = threading.Event()
    manager = _manager(loader, "a", "b")
    manager.states["b"].spec.preload = False
    start = asyncio.create_task(manager.start())
    await asyncio.sleep(0.05)
    with pytest.raises(APIError) as err:
        await manager.acquire("a")
    assert (err.value.status_code, err.value.code, err.value.headers) == (503, "model_loading", {"Retry-After": "5"})
    loader.gate.set()
    await start
    (await manager.acquire("b")).release()  # not preloaded: loaded on demand, the request waits for it
    assert loader.loaded == ["a", "b"]
