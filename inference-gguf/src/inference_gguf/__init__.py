"""Switchboard inference service for GGUF models (llama.cpp)."""
