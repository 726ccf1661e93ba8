"""Vector store for s2m-retrieval: FAISS index build/add/remove/search and on-disk layout."""
