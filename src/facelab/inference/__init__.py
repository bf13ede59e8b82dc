"""Inference: how an image becomes an embedding (input spec, the embedding primitive) and the one model handle
that every command and the Python API resolve a model reference through."""
