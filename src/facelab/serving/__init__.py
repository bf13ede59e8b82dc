"""Deployment: model bundles, exports, embeddings, a persistent gallery with 1:N search, and an HTTP service.

Heavy optional dependencies (FastAPI, ONNX, FAISS) are imported lazily by the module that needs them, so
``import facelab.serving`` and the CLI stay fast and work without the extras installed.
"""
