"""The Qwen3 decoder: forward(ids, cache) -> logits. No I/O, no sampling, no printing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .errors import EdgeQwenError
from .kernels import attention as attn_k
from .kernels import ops
from .kvcache import BatchKVCache, KVCache
from .weights import Affine, MatvecGroup

PREFILL_CHUNK = 256  # prompt tokens per pass through the layers; bounds activation memory
_SLOT0 = np.zeros(1, np.int64)  # a single sequence's cache is slot 0 of a batch of one


@dataclass
class Layer:
    """One decoder layer's weights under their Hugging Face names."""

    input_layernorm: np.ndarray  # (H,)
    q_proj: object  # (n_heads * hd, H)
    k_proj: object  # (n_kv * hd, H)
    v_proj: object  # (n_kv * hd, H)
    o_proj: object  # (H, n_heads * hd)
    q_norm: np.ndarray  # (hd,); ones (unused) for architectures without q/k norm
    k_norm: np.ndarray  # (hd,)
    post_attention_layernorm: np.ndarray  # (H,)
    gate_proj: object  # (I, H)
    up_proj: object  # (I, H)
    down_proj: object  # (H, I)
    q_bias: np.ndarray | None = None  # (n_heads * hd,) f32
    k_bias: np.ndarray | None = None  # (n_kv * hd,) f32
    v_bias: np.ndarray | None = None  # (n_kv * hd,) f32


class Workspace:
    """Every activation buffer for a pass of T tokens, allocated once and reused."""

    def __init__(self, cfg: ModelConfig, t: int, n_logits: int):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.x = np.empty((t, h), np.float32)  # residual stream
        self.h = np.empty((t, h), np.float32)  # normed input of a block
        self.q = np.empty((t, cfg.num_attention_heads, cfg.head_dim), np.float32)
        self.k = np.empty((t, cfg.num_key_value_heads, cfg.head_dim), np.float32)
        self.v = np.empty((t, cfg.num_key_value_heads, cfg.head_dim), np.float32)
        self.attn = np.empty((t, cfg.num_attention_heads, cfg.head_dim), np.float32)
        self.o = np.empty((t, h), np.float32)  # o_proj and down_proj outputs
        self.gate = np.empty((t, i), np.float32)
        self.up = np.empty((t, i), np.float32)
        self.logits = np.empty((n_logits, cfg.vocab_size), np.float32)


class Qwen3Model:
    """A loaded Qwen3 decoder. ``forward`` advances a KVCache; ``logits`` is the one-shot helper."""

    def __init__(self, config: ModelConfig, embed_tokens, layers: list[Layer], norm: np.ndarray, lm_head,
                 tokenizer=None, path: str = "", format_name: str = ""):
        self.config = config
        self.embed_tokens = embed_tokens  # (V, H)
        self.layers = layers
        self.norm = norm  # (H,)
        self.lm_head = lm_head  # (V, H); the embedding itself when tied
        self.tokenizer = tokenizer
        self.path = path
        self.format_name = format_name
        self._cos = np.empty((0, config.head_dim // 2), np.float32)
        self._sin = np.empty((0, config.head_dim // 2), np.float32)
        self._workspaces: dict[tuple[int, int], Workspace] = {}
        self._parts: dict[int, tuple] = {}  # decode attention scratch per batch size (_attention_parts)
        self._plans = None  # per-layer matvec groups (_matvec_groups)
        self.kv_dtype = "f32"  # KV cache storage of new caches: "f32" or "f16" (set by the loader)
        self.tensor_count = 0  # set by the loader
        self.file_bytes = 0  # bytes of all stored tensors, set by the loader

    # -- bookkeeping --------------------------------------------------------------------------

    def matrices(self):
        """Every weight matrix a token passes through (the embedding too when it is not the lm_head)."""
        mats = [self.lm_head] + ([] if self.embed_tokens is self.lm_head else [self.embed_tokens])
        for layer in self.layers:
            mats += [layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj, layer.gate_proj, layer.up_proj,
                     layer.down_proj]
        return mats

    def set_exact_dots(self, exact: bool) -> None:
        """exact=True: MLX int4/int8 and GGUF block weights meet float32 activations (the reference
        numbers); False (the default): int8-quantized activations and integer dot products
        (llama.cpp's scheme, about twice as fast for int4; logits move by the activation rounding)."""
        for w in self.matrices():
            if isinstance(w, Affine):
                w.int8_activations = not exact
        self._plans = None

    def weight_bytes(self) -> int:
        """Bytes of weights read for one decoded token (embedding row excluded)."""
        total = self.lm_head.nbytes
        for layer in self.layers:
            total += sum(w.nbytes for w in (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj,
                                            layer.gate_proj, layer.up_proj, layer.down_proj))
            total += 2 * layer.input_layernorm.nbytes + 2 * layer.q_norm.nbytes
        return total + self.norm.nbytes

    def new_cache(self, ctx: int | None = None) -> KVCache:
        """A KV cache of ``ctx`` positions (default: the smaller of the model's maximum and 4096)."""
        ctx = ctx or min(self.config.max_position_embeddings, 4096)
        return KVCache(self.config, ctx, dtype=self.kv_dtype)

    def _rope(self, n_pos: int):
        if self._cos.shape[0] < n_pos:
            n = max(n_pos, 2 * self._cos.shape[0])
            cos = np.empty((n, self.config.head_dim // 2), np.float32)
            sin = np.empty_like(cos)
            ops.rope_tables(self.config.rope_theta, self.config.head_dim, n, cos, sin)
            self._cos, self._sin = cos, sin
        return self._cos, self._sin

    def _workspace(self, t: int, n_logits: int) -> Workspace:
        key = (t, n_logits)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) > 4:
                self._workspaces.clear()
            ws = self._workspaces[key] = Workspace(self.config, t, n_logits)
        return ws

    def _attention_parts(self, ctx: int, b: int = 1):
        # scratch of decode attention for b sequences: per task (up to SPLIT positions; at least
        # MIN_TASKS of them), (n_heads, hd) partial outputs and (n_heads, 2) softmax max and sum
        n = max(-(-ctx // attn_k.SPLIT), attn_k.MIN_TASKS)
        parts = self._parts.get(b)
        if parts is None or parts[0].shape[1] < n:
            cfg = self.config
            parts = self._parts[b] = (np.empty((b, n, cfg.num_attention_heads, cfg.head_dim), np.float32),
                                      np.empty((b, n, cfg.num_attention_heads, 2), np.float32))
        return parts

    # -- compute ------------------------------------------------------------------------------

    def forward(self, ids, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run ``ids`` after what ``cache`` holds; return logits (T, V) if ``all_logits`` else (1, V).

        The returned array is a reused buffer: copy it to keep it past the next call.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        t_total = ids.shape[0]
        if t_total == 0:
            raise EdgeQwenError("forward() needs at least one token")
        if cache.pos + t_total > cache.ctx:
            raise EdgeQwenError(
                f"{cache.pos} cached + {t_total} new tokens exceed the context length {cache.ctx}"
            )
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise EdgeQwenError(f"token id {lo if lo < 0 else hi} is outside the vocabulary "
                                f"(0..{self.config.vocab_size - 1})")
        self._rope(cache.ctx)
        if t_total <= PREFILL_CHUNK:
            return self._forward_chunk(ids, cache, all_logits)
        out = np.empty((t_total if all_logits else 1, self.config.vocab_size), np.float32)
        for c0 in range(0, t_total, PREFILL_CHUNK):
            chunk = ids[c0:c0 + PREFILL_CHUNK]
            last = c0 + PREFILL_CHUNK >= t_total
            logits = self._forward_chunk(chunk, cache, all_logits)
            if all_logits:
                out[c0:c0 + len(chunk)] = logits
            elif last:
                out[0] = logits[0]
        return out

    def _forward_chunk(self, ids: np.ndarray, cache: KVCache, all_logits: bool) -> np.ndarray:
        cfg = self.config
        t = ids.shape[0]
        start = cache.pos
        ws = self._workspace(t, t if all_logits else 1)
        x = ws.x
        self.embed_tokens.embed(ids, x)
        if t == 1:  # decode: the batched decode path with this cache as slot 0 of a batch of one
            part_o, part_ml = self._attention_parts(cache.ctx)
            self._decode_layers(ws, cache.k[None], cache.v[None], _SLOT0, np.array([start], np.int64), part_o,
                                part_ml)
            cache.pos += 1
            cache.tokens.append(int(ids[0]))
            return ws.logits
        q2 = ws.q.reshape(t, -1)
        k2 = ws.k.reshape(t, -1)
        v2 = ws.v.reshape(t, -1)
        attn2 = ws.attn.reshape(t, -1)
        plans = self._matvec_groups()
        for li, layer in enumerate(self.layers):
            qkv, o_proj, gate_up, down = plans[li]
            ops.rmsnorm(x, layer.input_layernorm, cfg.rms_norm_eps, ws.h)
            qkv.matmul(ws.h, (q2, k2, v2))
            if layer.q_bias is not None:
                q2 += layer.q_bias
                k2 += layer.k_bias
                v2 += layer.v_bias
            ops.qk_norm_rope_store(ws.q, ws.k, ws.v, layer.q_norm, layer.k_norm, cfg.rms_norm_eps,
                                   self._cos, self._sin, start, cache.k[li], cache.v[li], cfg.qk_norm,
                                   cfg.rope_interleaved)
            attn_k.attention(ws.q, cache.k[li], cache.v[li], start, ws.attn)
            o_proj.matmul(attn2, (ws.o,))
            ops.add_rmsnorm(x, ws.o, layer.post_attention_layernorm, cfg.rms_norm_eps, ws.h)
            gate_up.matmul(ws.h, (ws.gate, ws.up))
            ops.silu_mul(ws.gate, ws.up)
            down.matmul(ws.gate, (ws.o,))
            ops.add_inplace(x, ws.o)
        cache.pos += t
        cache.tokens.extend(int(i) for i in ids)
        n = ws.logits.shape[0]
        ops.rmsnorm(x[t - n:], self.norm, cfg.rms_norm_eps, ws.h[:n])
        lm_head = plans[-1]
        (lm_head if n == 1 else lm_head.matmul)(ws.h[:n], (ws.logits,))
        return ws.logits

    def prepare(self, progress=None) -> None:
        """Plan decode now rather than at the first forward: the matvec groups, and before them the
        lane copies of 4-bit weights (weights.Affine; 0.37 s for Qwen3-0.6B int4), reported as
        ``progress(done_bytes, total_bytes, "repack")``."""
        multiplied = [m for m in self.matrices() if m is not self.embed_tokens or m is self.lm_head]  # not rows only
        todo = [w for w in multiplied if isinstance(w, Affine) and w.lanes_pending()]
        total, done = sum(w.nbytes for w in todo), 0
        for w in todo:
            w.make_lanes()
            done += w.nbytes
            if progress:
                progress(done, total, "repack")
        self._matvec_groups()

    def _matvec_groups(self):
        # per layer the matvec groups (q/k/v, o, gate/up, down), then the lm_head's; built once
        if self._plans is None:
            self._plans = [(MatvecGroup((L.q_proj, L.k_proj, L.v_proj)), MatvecGroup((L.o_proj,)),
                            MatvecGroup((L.gate_proj, L.up_proj)), MatvecGroup((L.down_proj,))) for L in self.layers]
            self._plans.append(MatvecGroup((self.lm_head,)))
        return self._plans

    def _decode_layers(self, ws: Workspace, k5, v5, slots, positions, part_o, part_ml) -> None:
        # one token for each of B sequences (ws.x, embedded) through every layer into ws.logits;
        # k5, v5: (slots, layers, ctx, n_kv, hd); token b at positions[b] of slot slots[b]
        cfg = self.config
        eps = cfg.rms_norm_eps
        x = ws.x
        b = x.shape[0]
        q2, k2, v2, attn2 = ws.q.reshape(b, -1), ws.k.reshape(b, -1), ws.v.reshape(b, -1), ws.attn.reshape(b, -1)
        plans = self._matvec_groups()
        ops.rmsnorm(x, self.layers[0].input_layernorm, eps, ws.h)
        for li, layer in enumerate(self.layers):
            qkv, o_proj, gate_up, down = plans[li]
            qkv(ws.h, (q2, k2, v2))
            if layer.q_bias is not None:
                q2 += layer.q_bias
                k2 += layer.k_bias
                v2 += layer.v_bias
            ops.qk_norm_rope_store_slots(ws.q, ws.k, ws.v, layer.q_norm, layer.k_norm, eps, self._cos, self._sin, li,
                                         slots, positions, k5, v5, cfg.qk_norm, cfg.rope_interleaved)
            attn_k.attention_decode(ws.q, k5, v5, li, slots, positions, part_o, part_ml, ws.attn)
            o_proj(attn2, (ws.o,))
            ops.add_rmsnorm(x, ws.o, layer.post_attention_layernorm, eps, ws.h)
            gate_up(ws.h, (ws.gate, ws.up))
            ops.silu_mul(ws.gate, ws.up)
            down(ws.gate, (ws.o,))
            nxt = self.layers[li + 1].input_layernorm if li + 1 < len(self.layers) else self.norm
            ops.add_rmsnorm(x, ws.o, nxt, eps, ws.h)  # the residual, then the next block's norm
        plans[-1](ws.h, (ws.logits,))

    def forward_batch(self, tokens, cache: BatchKVCache, slots) -> np.ndarray:
        """One decode step for several sequences: token b goes after what slot ``slots[b]`` holds.

        Returns logits (B, V) in a reused buffer. Each sequence's numbers are exactly those of
        ``forward`` with its own cache: the decode kernels compute every token on its own.
        """
        cfg = self.config
        tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        slots = np.ascontiguousarray(slots, dtype=np.int64).reshape(-1)
        b = tokens.shape[0]
        positions = np.array([cache.seqs[s].pos for s in slots], np.int64)
        if positions.max() >= cache.ctx:
            raise EdgeQwenError(f"a sequence of the batch is at the end of its context ({cache.ctx})")
        self._rope(cache.ctx)
        part_o, part_ml = self._attention_parts(cache.ctx, b)
        ws = self._workspace(b, b)
        self.embed_tokens.embed(tokens, ws.x)
        self._decode_layers(ws, cache.k, cache.v, slots, positions, part_o, part_ml)
        for s, tok in zip(slots, tokens):
            seq = cache.seqs[s]
            seq.pos += 1
            seq.tokens.append(int(tok))
        return ws.logits

    def logits(self, token_ids) -> np.ndarray:
        """Logits (T, V) float32 for every position of ``token_ids``, from a fresh cache."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        cache = KVCache(self.config, max(1, ids.shape[0]), dtype=self.kv_dtype)
        return self.forward(ids, cache, all_logits=True).copy()
