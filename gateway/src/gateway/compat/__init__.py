"""Routes that keep the seed systems' own APIs working through the gateway, one module per system.

- :mod:`gateway.compat.cern`: the Cern chat backend (seed 000), ``/api/chat``.
- :mod:`gateway.compat.chatqna`: the ChatQnA backend (seed 001), ``/v1/chatqna`` (on the hot path).
- :mod:`gateway.compat.itsupport`: the IT-support chatbot (seed 002), ``/api/v1/chat/``.
- :mod:`gateway.compat.finetunellm`: the FineTuneLLM backend (seed 003), ``/chat`` and its session routes.
- :mod:`gateway.compat.alterego`: the AlterEgo backend (seed 004), ``/chat/completions`` and ``/models``.

Each module has a FastAPI ``router``; :data:`ROUTERS` is what the app includes. A seed's streaming chat
route is answered on the hot path (:mod:`gateway.chat`), which takes its request and stream translation
from the seed's module. A new seed module adds its router to :data:`ROUTERS`.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.compat import alterego, cern, chatqna, finetunellm, itsupport

__all__ = ["ROUTERS", "chatqna"]

ROUTERS: tuple[APIRouter, ...] = (cern.router, finetunellm.router, itsupport.router, alterego.router)
