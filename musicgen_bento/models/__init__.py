"""Models: the BentoML model store of MusicGen checkpoints (`store`) and random-weight models built in code (`tiny`)."""
