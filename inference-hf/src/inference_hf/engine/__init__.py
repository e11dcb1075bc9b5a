"""The transformers engine: the only package of the service that imports torch and transformers at import
time and runs models (bitsandbytes through transformers' ``BitsAndBytesConfig``). Elsewhere they are imported
only inside functions: by :mod:`inference_hf.prepare` (the GGUF converter) and ``__main__`` (routing
transformers' logs).

Continuous batching with one KV cache per batch. Each model keeps a running batch: a ``DynamicCache``
whose rows are right-aligned (left-padded) with a 2-D attention mask and explicit per-row
``position_ids``; sequences join it between steps and leave it the step they finish or their client goes
away (:mod:`~inference_hf.engine.scheduler` has the step's phases).

Why not transformers' own continuous batching (``generate_batch`` / paged attention)? It takes one
generation config for all requests, while each request here carries its own sampling parameters,
penalties, seed and stop sequences, needs token-by-token streaming, and must be dropped the moment its
client leaves; its CPU path is also young. A plain ``DynamicCache`` works with every attention
implementation and with bitsandbytes layers. Why not step-wise dynamic batching (wait, then run a fixed
batch to the end)? A request arriving mid-generation would wait for the whole batch; here it joins at
the next step.

Merging rows of different ages needs per-row positions. Decoder-only models that take
``position_ids`` get them. Models that do not (and encoder-decoder models such as BART and BlenderBot,
whose decoders derive positions from the cache length) are never merged: sequences admitted in the
same step form a *cohort* batch of their own, and each step runs one forward pass per cohort. They
still share passes with whoever arrived together, and never see a shifted position.

Modules, one job each:

- :mod:`~inference_hf.engine.types`: errors, :class:`ModelInfo`, :class:`EngineStats`, :class:`HFObserver`;
- :mod:`~inference_hf.engine.sampling`: :func:`sample_token` and the per-sequence :class:`TokenSampler`;
- :mod:`~inference_hf.engine.batches`: the KV-cache batches and the rows in them;
- :mod:`~inference_hf.engine.loading`: device, dtype, quantization, tokenizer: a loaded model;
- :mod:`~inference_hf.engine.scheduler`: one step in phases (admit, decode, sample, retire);
- :mod:`~inference_hf.engine.worker`: :class:`HFEngine`, the loaded models and the worker thread.
"""

from inference_hf.engine.loading import resolve_device
from inference_hf.engine.sampling import TokenSampler, sample_token
from inference_hf.engine.types import EngineStats, HFObserver, LoadError, ModelInfo, ModelNotLoaded
from inference_hf.engine.worker import HFEngine

__all__ = [
    "EngineStats",
    "HFEngine",
    "HFObserver",
    "LoadError",
    "ModelInfo",
    "ModelNotLoaded",
    "TokenSampler",
    "resolve_device",
    "sample_token",
]
