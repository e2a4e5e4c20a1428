"""musicgen-bento: Meta's MusicGen models served over HTTP with BentoML."""

__version__ = "0.1.0"
