"""Switchboard retriever: embeddings, FAISS collections, ingestion and search (port 8003)."""
