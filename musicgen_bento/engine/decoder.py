"""The MusicGen decoder's forward, written once for both of its uses: the prefill of one request
(its whole start at once) and a decoding step (one token for every row of the batch). They differ
only in how self-attention reads and writes the cache; every other part of a layer is shared."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .batch_state import BatchState
from .kv_cache import KVCache, attention_bias
from .weights import (
    Int8Linear,
    PackedLinear,
    Slot,
    WeightLayout,
    choose_layout,
    join,
    joint_weight,
    pack,
    release_replaced_weights,
)

# Self-attention of one layer: (layer index, projected q|k|v, scale) -> attention output.
SelfAttention = Callable[[int, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class CrossRows:
    """The cross-attention a forward reads: rows of the cache, `length` positions, and the bias."""

    rows: slice
    length: int
    bias: torch.Tensor


class Decoder:
    """Runs the decoder of a loaded model over the engine's cache with joint weights.

    The joint weights (q|k|v per layer, the codebooks' heads, their embeddings) cut the operations
    per step; on CPUs in bfloat16 the linear ones are packed for oneDNN, or quantized to int8 where
    the operator asks (`weights`). The model's
    own modules become views or parts of them, so the model keeps one copy and works as before.
    """

    def __init__(
        self, model: Any, pack_weights: bool = True, quantize: bool = False, layout: WeightLayout | None = None
    ) -> None:
        causal_lm = model.decoder
        self.model = model
        self.stack = causal_lm.model.decoder
        config = causal_lm.config
        self.is_melody = not hasattr(self.stack.layers[0], "encoder_attn")
        self.codebooks = int(config.num_codebooks)
        self.vocab = int(config.vocab_size)
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.layers = len(self.stack.layers)
        self.dtype = next(causal_lm.parameters()).dtype
        device = next(causal_lm.parameters()).device
        layers = self.stack.layers
        if isinstance(layers[0].fc1, PackedLinear):
            self.layout = WeightLayout(
                True, "packed for oneDNN by an earlier engine on this model", layers[0].fc1.for_rows
            )
        elif isinstance(layers[0].fc1, Int8Linear):
            self.layout = WeightLayout(True, "int8: quantized by an earlier engine on this model", int8=True)
        elif layout is not None:
            self.layout = layout
        elif not pack_weights and not quantize:
            self.layout = WeightLayout(False, "dense: packing turned off (pack_weights=False)")
        else:
            self.layout = choose_layout(device, self.dtype, layers[0].fc1.weight, quantize)
        self.qkv = [
            join([(layer.self_attn, "q_proj"), (layer.self_attn, "k_proj"), (layer.self_attn, "v_proj")], self.layout)
            for layer in layers
        ]
        self.codebook_heads = join(
            [(causal_lm.lm_heads, str(index)) for index in range(len(causal_lm.lm_heads))], self.layout
        )
        if self.layout.packed:
            for layer in layers:
                for slot in self._linear_slots(layer):
                    pack(slot, self.layout)
        self.embedding = joint_weight(list(self.stack.embed_tokens))
        table_rows = self.stack.embed_tokens[0].weight.shape[0]
        self.embedding_offsets = torch.arange(self.codebooks, device=device) * table_rows
        # The weights joined, packed or quantized above were copied; their old memory goes back.
        release_replaced_weights(model, self.layout.packed)

    def _linear_slots(self, layer: Any) -> list[Slot]:
        """A layer's linear modules other than self-attention's q|k|v (those are joined)."""
        slots: list[Slot] = [(layer.self_attn, "out_proj"), (layer, "fc1"), (layer, "fc2")]
        if not self.is_melody:
            slots += [(layer.encoder_attn, name) for name in ("q_proj", "k_proj", "v_proj", "out_proj")]
        return slots

    def ensure_positions(self, positions: int) -> None:
        """Makes the sinusoidal position table cover `positions`."""
        if self.stack.embed_positions.weights.shape[0] < positions:
            self.stack.embed_positions.make_weights(positions, self.hidden)

    def encode_conditioning(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two conditioning rows (conditional, unconditional) of one request.

        Uses the model's own helpers, exactly as `generate()` with guidance does, so the decoder
        sees the same states: text models get cross-attention states and mask, melody models the
        prefix of projected chroma and text states.
        """
        config = copy.copy(self.model.generation_config)
        config.guidance_scale = 3.0  # any value > 1: both rows are always built
        kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
        if self.is_melody:
            kwargs = self.model._prepare_encoder_hidden_states_kwargs_for_generation(
                inputs["input_ids"], kwargs, "input_ids", config
            )
            return kwargs["encoder_hidden_states"].to(self.dtype), None
        kwargs = self.model._prepare_text_encoder_kwargs_for_generation(
            inputs["input_ids"], kwargs, "input_ids", config
        )
        states = kwargs["encoder_outputs"].last_hidden_state
        mask = kwargs["attention_mask"]
        model_config = self.model.config
        if (
            model_config.text_encoder.hidden_size != model_config.decoder.hidden_size
            and model_config.decoder.cross_attention_hidden_size is None
        ):
            states = self.model.enc_to_dec_proj(states)
        states = states * mask[..., None]
        return states.to(self.dtype), mask.bool()

    def fill_cross(self, cache: KVCache, rows: slice, states: torch.Tensor, mask: torch.Tensor) -> None:
        """Computes a request's cross-attention keys and values (text models) into its cache rows."""
        length = states.shape[1]
        # A row with nothing to attend to (the unconditional one, and the conditional one of an
        # empty prompt) has zeros for states, so for keys and values; letting it attend to them
        # gives the zero output transformers gets from a fully masked row, without relying on how
        # a kernel treats fully masked rows.
        mask = mask.clone()
        mask[~mask[:, :length].any(dim=1), :length] = True
        cache.cross_bias[rows] = float("-inf")
        cache.cross_bias[rows, :length] = attention_bias(mask, cache.dtype)
        for index, layer in enumerate(self.stack.layers):
            attention = layer.encoder_attn
            cache.cross_keys[index, rows, :, :length] = self.split_heads(attention.k_proj(states))
            cache.cross_values[index, rows, :, :length] = self.split_heads(attention.v_proj(states))

    # -- the two forwards -------------------------------------------------------------------------

    def prefill(self, cache: KVCache, hidden: torch.Tensor, rows: slice, cross_len: int) -> torch.Tensor:
        """Runs the decoder over a request's whole start (prefix, start token, prompt) in `hidden`,
        filling its cache rows; returns the last position's logits, (2, codebooks, vocab) in float32."""
        length = hidden.shape[1]

        def attend(index: int, projected: torch.Tensor, scale: float) -> torch.Tensor:
            query, key, value = (self.split_heads(part) for part in projected.chunk(3, dim=-1))
            cache.self_kv[index, rows, 0, :, :length] = key
            cache.self_kv[index, rows, 1, :, :length] = value
            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)

        cross = None if self.is_melody else CrossRows(rows, cross_len, cache.cross_bias[rows, None, None, :cross_len])
        hidden = self._layers(cache, hidden, attend, cross)
        return self.head_logits(self.stack.layer_norm(hidden[:, -1])).float()

    def step(self, cache: KVCache, state: BatchState, rows: int, length: int, cross: int) -> torch.Tensor:
        """One token for each of the first `rows` rows, attending over `length` cached positions
        (and `cross` cross-attention ones); writes and returns `state.logits`."""
        tokens = state.row_tokens[:rows]
        positions = state.row_positions[:rows]
        hidden = (self.embed(tokens) + self.stack.embed_positions.weights[positions]).unsqueeze(1)
        index_of_row = state.row_index[:rows]
        key_value_of_row = (rows, 2, self.heads, self.head_dim)
        visible = torch.arange(length, device=tokens.device).view(1, 1, 1, length) <= positions.view(rows, 1, 1, 1)
        bias = attention_bias(visible, cache.dtype)

        def attend(index: int, projected: torch.Tensor, scale: float) -> torch.Tensor:
            query, key_value = projected.split([self.hidden, 2 * self.hidden], dim=-1)
            layer_cache = cache.self_kv[index]
            layer_cache[index_of_row, :, :, positions] = key_value.view(key_value_of_row).to(cache.dtype)
            out = F.scaled_dot_product_attention(
                self.split_heads(query).to(cache.dtype),
                layer_cache[:rows, 0, :, :length],
                layer_cache[:rows, 1, :, :length],
                attn_mask=bias,
                scale=scale,
            )
            return out.to(self.dtype)

        cross_rows = (
            None if self.is_melody else CrossRows(slice(0, rows), cross, cache.cross_bias[:rows, None, None, :cross])
        )
        hidden = self.stack.layer_norm(self._layers(cache, hidden, attend, cross_rows))
        state.logits[:rows] = self.head_logits(hidden[:, 0])
        return state.logits

    def _layers(
        self, cache: KVCache, hidden: torch.Tensor, attend: SelfAttention, cross: CrossRows | None
    ) -> torch.Tensor:
        """Every decoder layer: self-attention (as `attend` does it), cross-attention, feed-forward."""
        for index, layer in enumerate(self.stack.layers):
            attention = layer.self_attn
            projected = self.qkv[index](layer.self_attn_layer_norm(hidden))
            hidden = hidden + attention.out_proj(self.merge_heads(attend(index, projected, attention.scaling)))
            if cross is not None:
                keys = cache.cross_keys[index, cross.rows, :, : cross.length]
                values = cache.cross_values[index, cross.rows, :, : cross.length]
                hidden = hidden + self._cross_attention(layer, hidden, keys, values, cross.bias)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        return hidden

    def row_probes(self, cache_dtype: torch.dtype) -> list[tuple[str, Callable[[int], torch.Tensor]]]:
        """Each kind of product a decoding step computes, as a function of the rows it computes for
        (every pair of rows holding the same request's input): the step's distinct matrix products
        on the first layer's weights and the heads', and attention over a cached length. For the
        start-up check of batch invariance (`invariance.find_min_rows`)."""
        device = self.embedding.device
        noise = torch.Generator(device=device).manual_seed(0)

        def pair(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.randn(2, *shape, generator=noise, device=device).to(dtype)

        def product(linear: Any) -> Callable[[int], torch.Tensor]:
            inputs = pair(linear.in_features, dtype=self.dtype)
            return lambda rows: linear(inputs.repeat(rows // 2, 1))

        def attention(length: int) -> Callable[[int], torch.Tensor]:
            query = pair(self.heads, 1, self.head_dim, dtype=cache_dtype)
            keys = pair(self.heads, length, self.head_dim, dtype=cache_dtype)
            values = pair(self.heads, length, self.head_dim, dtype=cache_dtype)
            visible = torch.arange(length, device=device) < length * 3 // 4  # the rest masked, as unused positions are
            bias = attention_bias(visible.expand(2, 1, 1, length), cache_dtype)

            def run(rows: int) -> torch.Tensor:
                times = rows // 2
                return F.scaled_dot_product_attention(
                    query.repeat(times, 1, 1, 1),
                    keys.repeat(times, 1, 1, 1),
                    values.repeat(times, 1, 1, 1),
                    attn_mask=bias.repeat(times, 1, 1, 1),
                )

            return run

        layer = self.stack.layers[0]
        products = {
            "self-attention projections": self.qkv[0],
            "self-attention output": layer.self_attn.out_proj,
            "feed-forward in": layer.fc1,
            "feed-forward out": layer.fc2,
            "codebook heads": self.codebook_heads,
        }
        if not self.is_melody:
            products["cross-attention query"] = layer.encoder_attn.q_proj
            products["cross-attention output"] = layer.encoder_attn.out_proj
        probes = [(f"the {name} product", product(linear)) for name, linear in products.items()]
        return [
            *probes,
            ("attention over 64 positions", attention(64)),
            ("attention over 320 positions", attention(320)),
        ]

    # -- the pieces -------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The summed embeddings of every codebook's token: tokens (N, codebooks) → (N, hidden)."""
        return F.embedding(tokens + self.embedding_offsets, self.embedding).sum(dim=1)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every codebook's logits: hidden (N, hidden) → (N, codebooks, vocab)."""
        return self.codebook_heads(hidden).view(hidden.shape[0], self.codebooks, self.vocab)

    def _cross_attention(
        self, layer: Any, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        attention = layer.encoder_attn
        query = self.split_heads(attention.q_proj(layer.encoder_attn_layer_norm(hidden))).to(keys.dtype)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=attention.scaling)
        return attention.out_proj(self.merge_heads(out.to(self.dtype)))  # type: ignore[no-any-return]

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)
