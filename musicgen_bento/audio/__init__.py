"""Audio: clips as the model sees them (`clip`), audio files (`files`) and which files a request may name (`paths`)."""
