"""Vector store for s2m-retrieval: FAISS index build/add/remove/search, shard files and the on-disk layout.

May import: `s2m_retrieval.errors` only (no SQL, no models).
"""

