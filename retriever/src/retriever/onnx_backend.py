"""The transformer of a sentence-transformers model run by ONNX Runtime: the only module importing onnxruntime.

A sentence-transformers model is a pipeline: a ``Transformer`` module (tokenizer + a Hugging Face model that
turns token ids into token embeddings), then pooling, and possibly dense and normalize modules. Almost all of
the time goes into the transformer, and ONNX Runtime runs a small BERT about twice as fast as eager torch on a
few CPU cores (``bench/retrieval.py scale`` measures both), with the same float32 results. So the transformer
is exported to ONNX once (with ``torch.onnx.export``; about two seconds for all-MiniLM-L6-v2), cached on disk
under a name that changes when the weights or the libraries change, and run by an ``InferenceSession``;
tokenization and the other modules stay in sentence-transformers.

A model whose transformer does not export (an architecture the exporter cannot trace) keeps running in torch:
:meth:`OnnxTransformer.prepare` returns None and says why in the log.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from retriever.index import write_atomically

__all__ = ["OnnxTransformer"]

logger = logging.getLogger(__name__)

_OPSET = 17
_OUTPUT = "token_embeddings"


class OnnxTransformer:
    """Token embeddings for a batch of tokenized features, computed by an ONNX Runtime session."""

    def __init__(self, session: Any, inputs: list[str], path: Path) -> None:
        self._session = session
        self.inputs = inputs
        self.path = path

    @classmethod
    def prepare(
        cls,
        model: Any,
        preprocess: Callable[[list[str]], dict[str, Any]],
        model_path: str,
        cache_dir: Path,
        threads: int,
    ) -> OnnxTransformer | None:
        """The session for ``model`` (a loaded ``SentenceTransformer`` whose tokenizer step is ``preprocess``),
        exporting its transformer to ``cache_dir`` first unless an export of the same weights is already there;
        None if it cannot run."""
        try:
            import onnxruntime as ort
            import torch

            transformer = model[0]
            auto_model = transformer.auto_model
            sample = dict(preprocess(["a sample sentence"]))
            accepted = inspect.signature(auto_model.forward).parameters
            inputs = [name for name, value in sample.items() if isinstance(value, torch.Tensor) and name in accepted]
            path = cache_dir / f"{_cache_key(model_path, inputs, ort.__version__, torch.__version__)}.onnx"
            if not path.is_file():
                logger.info(
                    "exporting the embedder's transformer to ONNX (once; cached)",
                    extra={"model": model_path, "path": str(path)},
                )
                _export(auto_model, [sample[name] for name in inputs], inputs, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # Idle ONNX Runtime threads would otherwise spin after each call, taking the cores that the event
            # loop and FAISS need between queries.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # any model the exporter or the runtime cannot handle stays on torch
            logger.warning(
                "the embedder runs in torch: its transformer could not run in ONNX Runtime",
                extra={"model": model_path, "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        logger.info("embedder transformer on ONNX Runtime", extra={"model": model_path, "path": str(path)})
        return cls(session, inputs, path)

    def __call__(self, features: dict[str, Any]) -> Any:
        """``features`` with ``token_embeddings`` added, as the sentence-transformers Transformer module adds it."""
        import torch

        feeds = {name: features[name].numpy().astype(np.int64, copy=False) for name in self.inputs}
        (embeddings,) = self._session.run([_OUTPUT], feeds)
        features[_OUTPUT] = torch.from_numpy(embeddings)
        return features


def _cache_key(model_path: str, inputs: list[str], ort_version: str, torch_version: str) -> str:
    """A file name that changes with the weights (their files' names, sizes and times), the inputs, the opset
    and the library versions."""
    digest = hashlib.sha256()
    root = Path(model_path)
    for file in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if file.is_file() and file.suffix in {".safetensors", ".bin", ".json"}:
            stat = file.stat()
            digest.update(
                f"{file.relative_to(root) if root.is_dir() else file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    digest.update(f"{','.join(inputs)}|{_OPSET}|{ort_version}|{torch_version}".encode())
    return f"{root.name or 'model'}-{digest.hexdigest()[:16]}"


def _export(auto_model: Any, sample: list[Any], inputs: list[str], path: Path) -> None:
    import torch

    class _TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = auto_model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.model(**dict(zip(inputs, tensors, strict=True))).last_hidden_state
            return hidden

    dynamic = {name: {0: "batch", 1: "tokens"} for name in [*inputs, _OUTPUT]}
    exported = io.BytesIO()
    # The tracer warns about every Python-level shape check in the model; they do not apply to the batch
    # and token axes declared dynamic here, and the vectors are checked against torch's in the tests.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TokenEmbeddings().eval(),
            tuple(sample),
            exported,  # type: ignore[arg-type]  # a binary file object is accepted (torch.onnx.export's docs)
            input_names=inputs,
            output_names=[_OUTPUT],
            dynamic_axes=dynamic,
            opset_version=_OPSET,
            dynamo=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, exported.getvalue())  # a concurrent or interrupted export never leaves half a file
