"""``iste serve``: a local web viewer with continuous, super-resolved zoom (docs/viewer.md).

Modules: :mod:`~iste.serve.deepzoom` (level and tile geometry), :mod:`~iste.serve.pixels`
(tile pixels: scan, bicubic, model), :mod:`~iste.serve.tiles` (caches, coalescing, the model
worker, cancellation), :mod:`~iste.serve.cache`, :mod:`~iste.serve.catalog` (which slides, under
which ids), :mod:`~iste.serve.addresses` (parsing requests), :mod:`~iste.serve.guard` (Host,
Origin and body checks before any route), :mod:`~iste.serve.app` (the
FastAPI application), :mod:`~iste.serve.runner` (uvicorn). FastAPI and uvicorn are imported
only by the last two (core dependencies of iste).
"""
