"""``models.retrieve`` and ``embeddings.create`` with the official openai SDK through the real gateway, in
front of the real inference-gguf service and the real retriever (its bundled embedder)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.helpers import FINETUNE_MODEL, MODEL
from tests.services import Service

pytestmark = pytest.mark.integration

EMBEDDER = "all-minilm-l6-v2"  # the retriever's id for the bundled all-MiniLM-L6-v2


def test_models_retrieve(client: openai.OpenAI) -> None:
    for model in (MODEL, FINETUNE_MODEL):
        card = client.models.retrieve(model)
        assert (card.id, card.object, card.owned_by) == (model, "model", "inference-gguf")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-17")
    assert caught.value.code == "model_not_found" and MODEL in str(caught.value)


def test_embeddings_create_gives_the_retrievers_vectors(client: openai.OpenAI, retriever: Service) -> None:
    texts = ["How do I reset my password?", "The printer on floor 3 is jammed."]
    through_gateway = client.embeddings.create(model=EMBEDDER, input=texts)  # the SDK asks for base64
    direct = httpx.post(
        f"{retriever.url}/v1/embeddings", json={"model": EMBEDDER, "input": texts, "encoding_format": "float"}
    ).json()
    assert [e.index for e in through_gateway.data] == [0, 1]
    assert through_gateway.model == EMBEDDER
    assert through_gateway.usage.prompt_tokens == direct["usage"]["prompt_tokens"] > 0
    for mine, theirs in zip(through_gateway.data, direct["data"], strict=True):
        assert len(mine.embedding) == 384
        assert mine.embedding == pytest.approx(theirs["embedding"], abs=1e-6)
    assert through_gateway.data[0].embedding != pytest.approx(through_gateway.data[1].embedding, abs=1e-3)
    with pytest.raises(openai.NotFoundError, match=EMBEDDER):  # the retriever's words, listing its embedders
        client.embeddings.create(model=MODEL, input="hello")
