"""Switchboard inference service for Hugging Face transformers models (bitsandbytes 4/8-bit)."""
