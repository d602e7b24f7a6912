"""The shared backbone: a DiT-style transformer, one model for every family (REFERENCE §2).

Layout (MDLM / Duo / Eso-LM public code, `models/dit.py`):

- token embedding K x d;
- time conditioning c = SiLU(MLP(sinusoid(sigma))): 256 sinusoidal features of sigma (DiT's
  TimestepEmbedder) -> Linear(256, 128) -> SiLU -> Linear(128, 128), then the SiLU the MDLM code
  applies before the adaLN projections. sigma = None means sigma = 0, so AR and MDLM (which are not
  time-conditioned) carry exactly the same parameters and FLOPs as Duo;
- n_layers blocks: bias-free LayerNorm, adaLN-Zero Linear(128, 6d) (zero-initialised: every block
  starts as the identity), fused QKV Linear(d, 3d, no bias), rotary embeddings (base 1e4) on q and k,
  `scaled_dot_product_attention`, output Linear(d, d, no bias), gated residual; then GELU(tanh) MLP
  d -> 4d -> d with biases, modulated and gated the same way;
- final layer: bias-free LayerNorm, adaLN Linear(128, 2d) (shift, scale; zero-initialised), untied
  Linear(d, K) with bias (zero-initialised as in MDLM, so a fresh model predicts uniformly).

The parameter count equals `scaling.flops.count_params` exactly (tests/trainers/test_backbone.py).

Attention modes (`DiTConfig.attention`, overridable per call):

- ``bidirectional`` (MDLM, Duo), ``causal`` (AR);
- ``permuted_causal`` (Eso-LM): the caller passes `permutation` (LongTensor[B, L], each row a
  permutation of 0..L-1). The model reads the tokens in the order `input_ids[b, permutation[b]]`,
  gives each the rotary position of where it came from (`permutation[b, i]`), attends causally in
  that order, and un-permutes the hidden states before the (position-wise) output layer, so the
  logits come back in the original order: logits[b, l] is the prediction for original position l,
  which saw exactly the tokens placed before it (and itself) in the permutation.

Incremental decoding: pass a `KVCache` and feed only the new tokens (with `position_ids` when the
order is not left to right). New tokens attend to every cached token and causally to each other;
`cache_commit=n` keeps only the first n new tokens in the cache (Eso-LM decodes queries at [MASK]
positions whose keys must not be kept). Bidirectional attention has no cache.

Low-level hooks for families that need another pattern (Eso-LM's sequential term): `position_ids`
(rotary positions, [L] or [B, L]) and `attention_mask` (bool, True = may attend, broadcastable to
[B, heads, L, L]) override the mode's defaults.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from scaling.flops import COND_DIM, MLP_RATIO, TIME_FREQ_DIM
from trainers.fused_head import HeadOutput, RowLoss, fused_head_loss

ATTENTION_MODES = ("bidirectional", "causal", "permuted_causal")
ROPE_BASE = 10_000.0  # rotary base of the MDLM/Duo/Eso-LM code
TIME_MAX_PERIOD = 10_000.0  # DiT's TimestepEmbedder (glide-text2im) max period


@strict
class DiTConfig(PreTrainedConfig):
    """Shape and attention pattern of the backbone; saved as config.json by `save_pretrained`."""

    model_type = "isoflop_dit"

    vocab_size: int = 64
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 2
    cond_dim: int = COND_DIM
    attention: Literal["bidirectional", "causal", "permuted_causal"] = "bidirectional"
    mask_token_id: int | None = None
    rope_base: float = ROPE_BASE
    tie_word_embeddings: bool = False

    def validate_shape(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention={self.attention!r}; choose one of {ATTENTION_MODES}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id={self.mask_token_id} outside the vocabulary [0, {self.vocab_size})")


class KVCache:
    """Keys and values of the tokens decoded so far, one preallocated buffer per layer.

    `length` tokens are committed; a forward with the cache writes the new tokens' keys after them,
    attends over committed + new, then commits `cache_commit` of the new ones (all by default). Keys
    are stored after the rotary rotation, so each token keeps the position it was fed with.
    """

    def __init__(self, max_length: int = 0):
        self.capacity = max_length  # a hint: the buffers double when a forward needs more room
        self.length = 0
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values ([B, H, n, Dh]) after the committed ones; return all of them."""
        end = self.length + k.shape[2]
        if layer == len(self._keys):
            self.capacity = max(self.capacity, end)
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self._keys.append(k.new_empty(shape))
            self._values.append(v.new_empty(shape))
        elif end > self._keys[layer].shape[2]:
            self.capacity = max(end, 2 * self._keys[layer].shape[2])
            self._keys[layer] = self._grow(self._keys[layer])
            self._values[layer] = self._grow(self._values[layer])
        self._keys[layer][:, :, self.length:end] = k
        self._values[layer][:, :, self.length:end] = v
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def _grow(self, buffer: torch.Tensor) -> torch.Tensor:
        grown = buffer.new_empty(*buffer.shape[:2], self.capacity, buffer.shape[3])
        grown[:, :, :self.length] = buffer[:, :, :self.length]
        return grown

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in at least float32 (MDLM's DiT)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float() if x.element_size() < 4 else x
        return F.layer_norm(wide, (x.shape[-1],)).type_as(x) * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class TimestepEmbedder(nn.Module):
    """sigma -> sinusoidal features (width 256) -> Linear -> SiLU -> Linear (DiT)."""

    def __init__(self, cond_dim: int, freq_dim: int = TIME_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(TIME_MAX_PERIOD)
                          * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        args = sigma.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """MDLM's DDiTBlock: adaLN-Zero modulated attention and MLP with gated residuals."""

    def __init__(self, d_model: int, n_heads: int, cond_dim: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(d_model)
        self.attn_qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, MLP_RATIO * d_model), nn.GELU(approximate="tanh"),
            nn.Linear(MLP_RATIO * d_model, d_model))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * d_model)
        self.adaLN_modulation.zero_init = True

    def forward(self, x, c, cos, sin, is_causal, attn_mask, kv_cache, layer):
        B, L, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2))
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        qkv = self.attn_qkv(h).view(B, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, L, Dh]
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # no-op unless autocast made q low precision
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv_cache is not None:
            k, v = kv_cache.extend(layer, k, v)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        attn = attn.transpose(1, 2).reshape(B, L, d)
        x = x + gate_msa * self.attn_out(attn)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiTFinalLayer(nn.Module):
    def __init__(self, d_model: int, vocab_size: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(d_model)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * d_model)
        self.adaLN_modulation.zero_init = True
        self.linear = HeadLinear(d_model, vocab_size)
        self.linear.zero_init = True

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The head's input [B, L, d]: the final norm, modulated by the time conditioning."""
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return modulate(self.norm_final(x), shift, scale)

    def forward(self, h: torch.Tensor, rows: torch.Tensor | None = None,
                head: RowLoss | None = None) -> torch.Tensor | HeadOutput:
        """Logits (or a fused head's loss) from `features`' output h. Position-wise: the head
        (d x K, the largest matmul and the log-softmax behind it at small d) runs only on the rows
        a loss scores."""
        return self.linear(h if rows is None else h[rows], head)


class HeadLinear(nn.Linear):
    """The output head: an nn.Linear (same parameters, same checkpoint keys) whose forward pads its
    output width on a GPU (`aligned_linear`) or, given a `head` loss, runs head and loss fused
    (trainers/fused_head.py). Either way the weight is read inside this module's own forward, the
    call for which ZeRO-3 gathers it."""

    def forward(self, x: torch.Tensor, head: RowLoss | None = None) -> torch.Tensor | HeadOutput:
        if head is not None:
            return fused_head_loss(x.reshape(-1, x.shape[-1]), self.weight, self.bias, head,
                                   align=HEAD_ALIGN if x.is_cuda else 1)
        return aligned_linear(self, x)


HEAD_ALIGN = 64  # output columns a GPU head matmul is padded to (tensor-core tiles are 64 wide)


def aligned_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x), with the output width padded to a multiple of HEAD_ALIGN on a GPU and sliced back.

    An output width that is not a multiple of 8 (a vocabulary of 32001, GPT-2's 50257) leaves the
    logits' rows misaligned for 16-byte loads, and cuBLAS then falls back to its align-1 kernels for
    the head and both of its backward matmuls: at the 113M shape (12 x 768, K = 32001, 32K tokens)
    those took 40 ms of a 112 ms step on an H200, against about 7 ms aligned
    (benchmarks/gpu_variants.sh). The padding is zero rows of the weight, so the first K columns
    are the same numbers; the parameters keep their shape (exact parameter counts, checkpoints).
    On a CPU the plain product is as fast."""
    if not x.is_cuda or linear.out_features % HEAD_ALIGN == 0:
        return F.linear(x, linear.weight, linear.bias)
    return padded_linear(x, linear.weight, linear.bias, HEAD_ALIGN)


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  align: int) -> torch.Tensor:
    """F.linear(x, weight, bias) computed with weight's rows zero-padded to a multiple of `align`,
    returned as a view of the first weight.shape[0] columns (gradients flow to the unpadded tensors)."""
    n_out = weight.shape[0]
    pad = -n_out % align
    padded_bias = None if bias is None else F.pad(bias, (0, pad))
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)), padded_bias)[..., :n_out]


class DiTModel(PreTrainedModel):
    """The backbone as a transformers model (safetensors `save_pretrained` / `from_pretrained`)."""

    config_class = DiTConfig
    base_model_prefix = "dit"
    main_input_name = "input_ids"
    _no_split_modules = ["DiTBlock"]

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        d = config.d_model
        self.vocab_embed = nn.Embedding(config.vocab_size, d)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.n_heads, config.cond_dim) for _ in range(config.n_layers))
        self.output_layer = DiTFinalLayer(d, config.vocab_size, config.cond_dim)
        self._rope_tables: dict = {}  # (device, dtype) -> (cos, sin) [n_positions, head_dim]
        # DiTModel.trunk compiled as one graph (trainers/kernels.compile_trunk), called with the
        # model; used where its shapes are fixed: no KV cache, no explicit mask. None = eager.
        self.compiled_trunk = None
        self.post_init()

    # -- transformers plumbing -------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        """torch's default Linear init (MDLM uses it), kaiming-uniform embedding, zero adaLN and head."""
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
                init.zeros_(module.bias)
                return
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, LayerNorm):
            init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.vocab_embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.vocab_embed = value

    # -- rotary ----------------------------------------------------------------------------------
    def _rope(self, n_positions: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [>= n_positions, head_dim], built once per device/dtype and grown by doubling."""
        size = max(64, 1 << (n_positions - 1).bit_length())
        if torch.compiler.is_compiling():
            # Traced into a compiled model (resources.compile: whole), the table is computed in the
            # graph (a few small kernels): filling the cache there would guard the graph on it and
            # compile the whole model again at the next step, once the cache is filled.
            return self._rope_table(size, device, dtype)
        key = (str(device), dtype)
        table = self._rope_tables.get(key)
        if table is None or table[0].shape[0] < n_positions:
            table = self._rope_tables[key] = self._rope_table(size, device, dtype)
        return table

    def _rope_table(self, size: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = self.config.d_model // self.config.n_heads
        inv_freq = 1.0 / (self.config.rope_base
                          ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        freqs = torch.outer(torch.arange(size, dtype=torch.float32, device=device), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _rotary_for(self, position_ids, offset: int, length: int, device, dtype,
                    n_positions: int | None = None):
        """cos/sin broadcastable to [B, H, L, Dh]: a slice for contiguous positions, else a gather.
        n_positions bounds the positions when the caller knows it (a permutation of 0..L-1), which
        spares a device sync on position_ids.max()."""
        if position_ids is None:
            cos, sin = self._rope(offset + length, device, dtype)
            return cos[offset:offset + length][None, None], sin[offset:offset + length][None, None]
        if n_positions is None:
            n_positions = int(position_ids.max()) + 1
        cos, sin = self._rope(n_positions, device, dtype)
        if position_ids.dim() == 1:
            return cos[position_ids][None, None], sin[position_ids][None, None]
        return cos[position_ids][:, None], sin[position_ids][:, None]

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        sigma: torch.Tensor | None = None,
        permutation: torch.LongTensor | None = None,
        attention: str | None = None,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        cache_commit: int | None = None,
        output_rows: torch.Tensor | None = None,
        head: RowLoss | None = None,
    ) -> torch.Tensor | HeadOutput:
        """Logits [B, L, K] (in the parameters' dtype) for input_ids [B, L]; with output_rows
        (BoolTensor[B, L], in the original order) only those positions' logits, [n_rows, K].

        sigma: FloatTensor[B] noise level -log(alpha_t) (None = zeros). permutation: see the module
        docstring (permuted_causal only). attention: overrides config.attention for this call.
        position_ids / attention_mask: low-level overrides. kv_cache / cache_commit: incremental
        decoding (causal or permuted_causal; pass position_ids for a permuted order).
        head: a loss over the output rows (row-major over [B, L], or the output_rows), computed with
        the head chunk by chunk (trainers/fused_head.py): returns a HeadOutput, not logits.
        """
        mode = attention or self.config.attention
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention {mode!r}; choose one of {ATTENTION_MODES}")
        B, L = input_ids.shape
        device = input_ids.device
        if permutation is not None:
            if mode != "permuted_causal":
                raise ValueError(f"a permutation needs attention='permuted_causal', got {mode!r}")
            if position_ids is not None or attention_mask is not None or kv_cache is not None:
                raise ValueError("permutation is exclusive with position_ids/attention_mask/kv_cache; "
                                 "for incremental decoding feed permuted tokens with their position_ids")
            input_ids = input_ids.gather(1, permutation)
            position_ids = permutation
        if kv_cache is not None and mode == "bidirectional":
            raise ValueError("a KV cache needs causal or permuted_causal attention")

        offset = kv_cache.length if kv_cache is not None else 0
        is_causal = mode != "bidirectional" and attention_mask is None and kv_cache is None
        if kv_cache is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask and kv_cache cannot be combined")
            if L > 1:  # new tokens see every cached token and causally each other
                attention_mask = torch.ones(L, offset + L, dtype=torch.bool, device=device).tril(offset)

        sigma = torch.zeros(B, device=device) if sigma is None else sigma.reshape(-1).expand(B)
        cos, sin = self._rotary_for(position_ids, offset, L, device, self.vocab_embed.weight.dtype,
                                    n_positions=L if permutation is not None else None)
        fixed_shapes = kv_cache is None and attention_mask is None
        trunk = self.compiled_trunk if fixed_shapes and self.compiled_trunk is not None else DiTModel.trunk
        h = trunk(self, input_ids, sigma, cos, sin, is_causal, attention_mask, kv_cache, permutation)
        if kv_cache is not None:
            kv_cache.commit(L if cache_commit is None else cache_commit)
        return self.output_layer(h, output_rows, head)

    def trunk(self, input_ids, sigma, cos, sin, is_causal: bool, attention_mask, kv_cache,
              permutation) -> torch.Tensor:
        """Everything but the head: ids [B, L] (already permuted) -> the head's input [B, L, d] in
        the original order. Every shape in it is fixed by (B, L), so it compiles to one graph for
        every family (the data-dependent row selection of MDLM and Eso-LM comes after it)."""
        x = self.vocab_embed(input_ids)
        c = F.silu(self.sigma_map(sigma))
        for layer, block in enumerate(self.blocks):
            x = block(x, c, cos, sin, is_causal, attention_mask, kv_cache, layer)
        if permutation is not None:  # back to the original order; the output layer is position-wise
            inverse = torch.argsort(permutation, dim=1)
            x = x.gather(1, inverse[..., None].expand(-1, -1, x.shape[-1]))
        return self.output_layer.features(x, c)


def build_model(n_layers: int, d_model: int, n_heads: int, vocab_size: int,
                attention: str = "bidirectional", mask_token_id: int | None = None) -> DiTModel:
    """A freshly initialised backbone (MDLM's init). Under `torch.device("meta")` nothing is allocated."""
    config = DiTConfig(vocab_size=vocab_size, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                       attention=attention, mask_token_id=mask_token_id)
    return DiTModel(config)


def forbid_token(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """float32 logits with `token_id` set to -inf: no family ever predicts [MASK] (SUBS for MDLM and
    Eso-LM; the AR and Duo codes do the same). The column is filled in a copy (float32 for
    low-precision logits; float64 in tests stays float64), so a caller's tensor is never modified.

    Not `index_fill` with an index tensor, which this did for float32 until an H100 (torch 2.11)
    failed to compile the float32 cross-entropy over it with dynamic shapes (the failing graph: its
    backward, an index_put); bf16 logits always took this form and compile there."""
    logits = logits.float() if logits.element_size() < 4 else logits.clone()
    logits[..., token_id] = float("-inf")
    return logits
