"""Small MusicGen and MusicGen-Melody checkpoints with random weights, built in code.

They have the real models' structure (T5 text encoder, EnCodec at 32 kHz with 4 codebooks
of 2048 codes at 50 frames a second, a MusicGen decoder with the delay pattern) at a tiny
width, so tests and offline smoke runs exercise exactly the code paths a real checkpoint
does. Random weights produce noise, not music. `real_shape_config` builds the published
musicgen-small and musicgen-medium shapes (still random) for benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..engine import DecoderShape

ModelKind = Literal["text", "melody", "stereo"]

TINY_NAMES: dict[str, str] = {
    "text": "musicgen-tiny-random",
    "melody": "musicgen-melody-tiny-random",
    "stereo": "musicgen-stereo-tiny-random",
}

_SAMPLE_RATE = 32000
_CODEBOOKS = 4
_CODEBOOK_SIZE = 2048
# The T5 vocabulary of the tiny tokenizer: specials, letters, digits and the word marker.
_PIECES = list("abcdefghijklmnopqrstuvwxyz0123456789▁")


def build_tokenizer() -> Any:
    """A T5-style (Unigram, SentencePiece word marker) tokenizer made in code, no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import T5Tokenizer  # tokenizers-backed since transformers 5

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(piece, -1.0) for piece in _PIECES]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5Tokenizer(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def _audio_encoder_config(width: int = 8) -> Any:
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=_SAMPLE_RATE,
        audio_channels=1,  # MusicGen encodes stereo as two mono streams
        num_filters=width,
        hidden_size=width * 2,
        codebook_size=_CODEBOOK_SIZE,
        codebook_dim=width * 2,
        upsampling_ratios=[8, 5, 4, 4],  # 640 samples a frame: 50 frames a second at 32 kHz
        target_bandwidths=[2.2],  # 4 codebooks of 11 bits at 50 Hz
        num_lstm_layers=1,
        chunk_length_s=None,
        overlap=None,
        normalize=False,
        use_causal_conv=False,
    )


def _text_encoder_config() -> Any:
    from transformers import T5Config

    return T5Config(vocab_size=3 + len(_PIECES), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)


def build_tiny_model(kind: ModelKind, channels: int = 1, seed: int = 0) -> tuple[Any, Any]:
    """Returns (model, processor) of a tiny random MusicGen (`text`), MusicGen-Melody (`melody`) or
    stereo MusicGen (`stereo`: the text model with two audio channels, as musicgen-stereo-* are)."""
    if kind == "stereo":
        kind, channels = "text", 2
    import torch
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyFeatureExtractor,
        MusicgenMelodyForConditionalGeneration,
        MusicgenMelodyProcessor,
        MusicgenProcessor,
    )

    decoder_args: dict[str, Any] = {
        "vocab_size": _CODEBOOK_SIZE,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "ffn_dim": 64,
        "num_codebooks": _CODEBOOKS * channels,
        "audio_channels": channels,
        "max_position_embeddings": 2048,
        "pad_token_id": _CODEBOOK_SIZE,
        "bos_token_id": _CODEBOOK_SIZE,
        # transformers' default (0.02) gives a tiny model near-uniform logits, so changing the
        # text or the melody would rarely change a sampled token; wider weights make the
        # conditioning visible in the output, which the tests check.
        "initializer_factor": 0.5,
    }
    parts = {
        "text_encoder": _text_encoder_config().to_dict(),
        "audio_encoder": _audio_encoder_config().to_dict(),
    }
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config: Any
    model: Any
    if kind == "melody":
        config = MusicgenMelodyConfig(
            decoder=MusicgenMelodyDecoderConfig(**decoder_args).to_dict(), num_chroma=12, chroma_length=235, **parts
        )
        model = MusicgenMelodyForConditionalGeneration(config)
        processor: Any = MusicgenMelodyProcessor(
            feature_extractor=MusicgenMelodyFeatureExtractor(feature_size=12, sampling_rate=_SAMPLE_RATE),
            tokenizer=tokenizer,
        )
    else:
        config = MusicgenConfig(decoder=MusicgenDecoderConfig(**decoder_args).to_dict(), **parts)
        model = MusicgenForConditionalGeneration(config)
        processor = MusicgenProcessor(
            feature_extractor=EncodecFeatureExtractor(feature_size=channels, sampling_rate=_SAMPLE_RATE),
            tokenizer=tokenizer,
        )
    _randomise_codebooks(model)
    _set_musicgen_generation_defaults(model)
    return model.eval(), processor


def _randomise_codebooks(model: Any) -> None:
    # EnCodec's codebooks are buffers that transformers initialises to zeros (training fills
    # them in); all-zero codebooks would decode every token sequence to the same audio.
    import torch
    from transformers.models.encodec.modeling_encodec import EncodecEuclideanCodebook

    with torch.no_grad():
        for module in model.audio_encoder.modules():
            if isinstance(module, EncodecEuclideanCodebook):
                module.embed.normal_()
                module.embed_avg.copy_(module.embed)
                module.cluster_size.fill_(1.0)


def _set_musicgen_generation_defaults(model: Any) -> None:
    # The published checkpoints ship these generation defaults; random builds start without them.
    config = model.generation_config
    config.decoder_start_token_id = _CODEBOOK_SIZE
    config.pad_token_id = _CODEBOOK_SIZE
    config.bos_token_id = _CODEBOOK_SIZE
    config.do_sample = True
    config.guidance_scale = 3.0
    config.max_length = 1500


def save_tiny_model(kind: ModelKind, directory: Path) -> Path:
    """Builds a tiny model and writes it, with its processor, in transformers format."""
    model, processor = build_tiny_model(kind)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Published decoder shapes (hidden size, layers, heads, ffn) of the text-to-music checkpoints.
REAL_DECODER_SHAPES: dict[str, dict[str, Any]] = {
    "musicgen-small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096},
    "musicgen-medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
    # musicgen-melody's decoder is musicgen-medium's, after a prefix of 235 chroma frames.
    "musicgen-melody": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
}


def real_decoder_shape(shape: str) -> DecoderShape:
    """A published checkpoint's decoder dimensions, as the service reads them from its config."""
    dims = REAL_DECODER_SHAPES[shape]
    return DecoderShape(dims["hidden_size"], dims["ffn_dim"], dims["num_hidden_layers"], dims["num_attention_heads"])


def build_real_shape_model(shape: str, seed: int = 0, layers: int | None = None) -> tuple[Any, Any]:
    """A random-weight model whose decoder has a published checkpoint's shape (for benchmarks).

    The text encoder is T5-base-sized and the audio codec keeps its real frame rate; only the
    decoder's shape matters for per-step decoding cost, and it is exact. `layers` keeps only that
    many decoder layers (the real widths, so the real kernels, at a fraction of the cost: tests).
    `musicgen-melody` is a melody model (12 chroma bins, 235 chroma frames, as published).
    """
    import torch
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyFeatureExtractor,
        MusicgenMelodyForConditionalGeneration,
        MusicgenMelodyProcessor,
        MusicgenProcessor,
        T5Config,
    )

    melody = shape == "musicgen-melody"
    decoder_args: dict[str, Any] = {
        "vocab_size": _CODEBOOK_SIZE,
        "num_codebooks": _CODEBOOKS,
        "max_position_embeddings": 2048,
        "pad_token_id": _CODEBOOK_SIZE,
        "bos_token_id": _CODEBOOK_SIZE,
        **REAL_DECODER_SHAPES[shape],
        **({} if layers is None else {"num_hidden_layers": layers}),
    }
    text = T5Config(vocab_size=3 + len(_PIECES), d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    parts = {"text_encoder": text.to_dict(), "audio_encoder": _audio_encoder_config(width=32).to_dict()}
    torch.manual_seed(seed)
    model: Any
    processor: Any
    if melody:
        config: Any = MusicgenMelodyConfig(
            decoder=MusicgenMelodyDecoderConfig(**decoder_args).to_dict(), num_chroma=12, chroma_length=235, **parts
        )
        model = MusicgenMelodyForConditionalGeneration(config)
        processor = MusicgenMelodyProcessor(
            feature_extractor=MusicgenMelodyFeatureExtractor(feature_size=12, sampling_rate=_SAMPLE_RATE),
            tokenizer=build_tokenizer(),
        )
    else:
        config = MusicgenConfig(decoder=MusicgenDecoderConfig(**decoder_args).to_dict(), **parts)
        model = MusicgenForConditionalGeneration(config)
        processor = MusicgenProcessor(
            feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=_SAMPLE_RATE),
            tokenizer=build_tokenizer(),
        )
    _randomise_codebooks(model)
    _set_musicgen_generation_defaults(model)
    return model.eval(), processor
