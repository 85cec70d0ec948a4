"""Whole-slide images: which files are slides and who reads them (:mod:`iste.slides.formats`),
the reader interface (:mod:`iste.slides.reader`), the pyramidal writer
(:mod:`iste.slides.writer`) and the tiled super-resolution pipeline."""

from iste.slides.formats import BACKENDS, SLIDE_SUFFIXES, is_slide, open_slide
from iste.slides.reader import InMemorySlide, SlideError, SlideReader

__all__ = ["BACKENDS", "SLIDE_SUFFIXES", "InMemorySlide", "SlideError", "SlideReader",
           "is_slide", "open_slide"]
