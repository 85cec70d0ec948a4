"""Whole-slide images: readers (:mod:`iste.slides.reader`), the pyramidal writer
(:mod:`iste.slides.writer`) and the tiled super-resolution pipeline."""

from iste.slides.reader import BACKENDS, InMemorySlide, SlideError, SlideReader, open_slide

__all__ = ["BACKENDS", "InMemorySlide", "SlideError", "SlideReader", "open_slide"]
