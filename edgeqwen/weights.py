"""Weight formats: what a stored tensor is, and which kernel multiplies by it.

Every format exposes the same small surface to the model: ``shape`` (N, K), ``nbytes`` (bytes
read per full pass, for GB/s accounting), ``matvec`` (decode: B tokens, each weight row read once)
and ``matmul`` (prefill: T tokens) into a preallocated output, and, for embedding tables, ``embed``.
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeQwenError
from .kernels import gguf_blocks, linear, ops, quant
from .kernels.simd import prefetch_streams
from .storage import TensorStore, release_pages
from .storage.safetensors import to_float32

DENSE_DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32"}
_STORED_DTYPE = {kind: dtype for dtype, kind in DENSE_DTYPES.items()}


def padded_matmul(kernel, x: np.ndarray, out: np.ndarray) -> None:
    """Run a prefill ``kernel(x, out)`` that wants a multiple of 4 tokens, zero-padding x if needed."""
    t = x.shape[0]
    if t % 4 == 0:
        kernel(x, out)
        return
    t4 = (t + 3) // 4 * 4
    xp = np.zeros((t4, x.shape[1]), np.float32)
    xp[:t] = x
    op = np.empty((t4, out.shape[1]), np.float32)
    kernel(xp, op)
    out[:] = op[:t]


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """np.empty whose data starts on an ``align``-byte boundary (whole-cache-line vector loads)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


def activation_buffers(cache: dict, b: int, k: int):
    """Buffers for x (B, K) rounded to int8 (kernels.quant.quantize_act): (B, K) int8 codes,
    (B, NB8) block scales and (B, 2 NB8) scaled sums (of each block, or of each 16 for 6-bit
    codes), NB8 the K/32 blocks padded to whole octets. Views of one allocation in ``cache`` that
    grows to the largest B asked for (decode's few tokens, prefill's chunk)."""
    bufs = cache.get("rows")
    if bufs is None or bufs[0].shape[0] < b:
        nb8 = -(-k // 256) * 8
        bufs = cache["rows"] = (aligned_empty((b, k), np.int8), aligned_empty((b, nb8), np.float32),
                                aligned_empty((b, 2 * nb8), np.float32))
    return bufs[0][:b], bufs[1][:b], bufs[2][:b]


_PREFETCH_STREAMS = prefetch_streams()  # read once: dense rows four at a time, 8-bit rows prefetched


class Dense:
    """A bf16 / f16 / f32 matrix used exactly as stored (see kernels.numeric for the views)."""

    def __init__(self, data: np.ndarray, kind: str):
        self.data = data  # (N, K) uint16 (bf16) | int16 (f16) | float32
        self.kind = kind
        self.shape = data.shape
        self.nbytes = data.nbytes

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        """out (B, N) = x (B, K) @ W.T for a few decode tokens."""
        linear.matvec(self.data, x, out, _PREFETCH_STREAMS)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        """out (T, N) = x (T, K) @ W.T for prefill."""
        padded_matmul(lambda xp, op: linear.matmul(self.data, xp, op), x, out)

    def embed(self, ids: np.ndarray, out: np.ndarray) -> None:
        """out (T, K) = rows ``ids`` of the table, as float32."""
        ops.embed(self.data, ids, out)

    def row_f32(self) -> np.ndarray:
        """The whole matrix as float32 (tests and tools only: it copies)."""
        return to_float32(self.data, _STORED_DTYPE[self.kind])


def _check_shape(store: TensorStore, name: str, shape: tuple[int, ...]) -> None:
    got = store.shape(name)
    if tuple(got) != tuple(shape):
        raise EdgeQwenError(f"{store.where(name)}: shape {list(got)} does not match the config's {list(shape)}")


def load_dense(store: TensorStore, name: str, shape: tuple[int, ...]) -> Dense:
    """The tensor ``name``, checked against ``shape``, as a Dense weight (no copy)."""
    if name not in store:
        raise EdgeQwenError(f"tensor {name!r} is missing from the checkpoint")
    dtype = store.dtype(name)
    if dtype not in DENSE_DTYPES:
        raise EdgeQwenError(f"{store.where(name)}: dtype {dtype} is not a supported weight dtype (BF16, F16, F32)")
    _check_shape(store, name, shape)
    return Dense(store.get(name), DENSE_DTYPES[dtype])


def load_vector(store: TensorStore, name: str, size: int) -> np.ndarray:
    """A norm weight or bias of length ``size``, in its stored dtype view (no copy)."""
    w = load_dense(store, name, (size,))
    return w.data


class Affine:
    """MLX-layout affine group quantization: ``w = scale * q + bias`` per group of ``group_size``.

    The llama.cpp block formats rewritten into it (``gguf_matrix``) keep their scales as compact as
    the file: ``offset`` > 0 means every bias is -offset x its scale (Q4_0, Q8_0, Q6_K; no biases
    stored), and uint8 / int8 scales (and mins) are small integers times the row's per-256-weight
    ``supers`` (Q4_K, Q6_K). The int8-activation kernel reads them so; the float paths (exact dots,
    embedding rows) take their products made on demand (``_float_params``, ``_float_codes``)."""

    def __init__(self, wq: np.ndarray, scales: np.ndarray, biases: np.ndarray | None, bits: int, group_size: int,
                 kind: str = "", offset: int = 0, supers: np.ndarray | None = None):
        self._wq = wq  # (N, K * bits / 8) uint8: the uint32 words as little-endian bytes (the wq property)
        self.scales = scales  # (N, K / group_size) stored dtype, or u8 / i8 multiples of supers
        self.biases = biases  # (N, K / group_size) like scales, None when offset > 0
        self.offset = offset
        self.supers = supers  # (N, 2 K / 256) f32 (scale factor, bias factor) per 256 weights, or None
        self.bits = bits
        self.group_size = group_size
        self.kind = kind or f"int{bits}-g{group_size}"
        self.shape = (wq.shape[0], wq.shape[1] * 8 // bits)
        self.nbytes = sum(a.nbytes for a in (wq, scales, biases, supers) if a is not None)
        self.int8_activations = True  # decode with int8-quantized activations (False: float32, exact)
        self._group = None  # this weight's own MatvecGroup, made on the first int8-activation matvec
        self._prep: dict[int, tuple] = {}  # B -> activation buffers, allocated once per batch size
        self._float = None  # (scales, biases) for the float kernels, made on first use
        self._codes8 = None  # 6-bit codes widened to bytes for the float kernels, made on first use
        # 4-bit rows with float scales, or Q4_K's small-integer ones, decode (and prefill) from a copy
        # in the lane layout (one 32-bit lane per block: simd.lane_dot), made with the first
        # int8-activation product
        float_scales = (supers is None and scales.dtype in (np.uint16, np.int16, np.float32)
                        and group_size in (32, 64, 128))
        q4_k = supers is not None and scales.dtype == np.uint8 and group_size == 32
        self.lanes = bits == 4 and offset in (0, 8) and (float_scales or q4_k)
        self._lane_args = None
        # int8 activations come in blocks of 32, and the MLX-layout 4-bit kernel takes two blocks at a
        # time (the lane layout any number); 6-bit codes are Q6_K's (16-weight groups, offset 32:
        # simd.affine_q8_dot, bits=6)
        self._q8_kernel = (group_size % 32 == 0 and (bits == 8 or self.shape[1] % 64 == 0 or self.lanes)) or bits == 6

    @property
    def wq(self) -> np.ndarray:
        """The codes in the MLX layout; rebuilt from the lane copy (and kept) if it replaced them."""
        if self._wq is None:
            self._wq = self._codes_of(np.arange(self.shape[0]))
        return self._wq

    def _codes_of(self, rows) -> np.ndarray:
        """MLX-layout codes of some rows, from the lane copy when it replaced them."""
        if self._wq is not None:
            return self._wq[rows]
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.shape[1] * self.bits // 8), np.uint8)
        quant.from_lanes(self._lane_args[0], rows, out)
        return out

    def _compact(self) -> bool:
        return self.offset > 0 or self.supers is not None

    def _float_params(self, rows=None):
        """(scales, biases) of ``rows`` (default all, cached) in a form the float kernels take: as
        stored for the MLX layout, else products (exact: f16 x small integer x power of 2) in f16
        where they fit it (Q4_0, Q8_0: the lm_head's float path reads half the bytes), else f32."""
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])  # noqa: E731
        if not self._compact():
            return pick(self.scales), pick(self.biases)
        if rows is None and self._float is not None:
            return self._float
        sc = pick(self.scales)
        if self.supers is not None:
            su = pick(self.supers)
            per_super = 256 // self.group_size
            s = sc.astype(np.float32) * np.repeat(su[:, 0::2], per_super, axis=1)
        else:
            s = to_float32(sc, {np.dtype(np.int16): "F16", np.dtype(np.float32): "F32"}[sc.dtype])
        if self.offset:
            b = np.float32(-self.offset) * s
            if self.supers is None:  # Q4_0 / Q8_0: f16 scales, and their biases exact in f16 too
                s, b = sc, _f16_if_exact(b)
        else:
            b = -(pick(self.biases).astype(np.float32) * np.repeat(su[:, 1::2], per_super, axis=1))
        if rows is None:
            self._float = (s, b)
        return s, b

    def _float_codes(self, rows=None):
        """(codes, bits) of ``rows`` (default all) for the float kernels: 6-bit codes widened to bytes
        (all rows cached), others as stored."""
        if self.bits != 6:
            return (self.wq if rows is None else self._codes_of(rows)), self.bits
        if rows is not None:
            codes = np.empty((len(rows), self.shape[1]), np.uint8)
            gguf_blocks.q6_codes(self.wq, np.asarray(rows, np.int64), codes)
            return codes, 8
        if self._codes8 is None:
            self._codes8 = np.empty(self.shape, np.uint8)
            gguf_blocks.q6_codes(self.wq, np.arange(self.shape[0]), self._codes8)
        return self._codes8, 8

    def _buffers(self, b: int):
        bufs = self._prep.get(b)
        if bufs is None:
            k = self.shape[1]
            four = self.bits == 4
            # (B, K/2) x[:, 0::2] and x[:, 1::2] for the nibble kernels; (B, G) group sums of x for the
            # byte kernels (the nibble kernels take the biases into the dequantized weights)
            half = (b, k // 2) if four else (0, 0)
            xsum = np.empty((0, 0) if four else (b, k // self.group_size), np.float32)
            bufs = self._prep[b] = (aligned_empty(half, np.float32), aligned_empty(half, np.float32), xsum)
        return bufs

    def _q8_key(self):
        """What decides the int8-activation kernel and its activation layout (None: float path)."""
        if not (self.int8_activations and self._q8_kernel):
            return None
        return (self.bits, self.group_size, self.shape[1], self.scales.dtype, self.offset, self.supers is None,
                None if self.biases is None else self.biases.dtype, self.lanes)

    def _float4_key(self):
        """What lets 4-bit float-path weights share one launch (None: not the 4-bit float path)."""
        if self.bits != 4 or self._q8_key() is not None:
            return None
        scales, biases = self._float_params()
        return self.shape[1], self.group_size, scales.dtype, biases.dtype

    def lanes_pending(self) -> bool:
        """True when int8-activation products will want a lane copy that is not made yet."""
        return self.lanes and self._lane_args is None and self._q8_key() is not None

    def make_lanes(self) -> None:
        """Make the lane copy now (it is otherwise made with the first int8-activation product)."""
        self._q8_args()

    def _q8_args(self):
        """(wq, scales, biases, supers) as the int8-activation kernel takes them (unread ones stand in)."""
        if self.lanes:
            if self._lane_args is None:
                self._lane_args = self._to_lanes()
                # the MLX-layout codes are read again only by the float kernels and embedding rows:
                # a file's pages leave this process, a copy (GGUF rewritten at load) is freed
                if not release_pages(self._wq):
                    self._wq = None
            return self._lane_args
        supers = np.empty((self.shape[0], 0), np.float32) if self.supers is None else self.supers
        return self.wq, self.scales, self.scales if self.biases is None else self.biases, supers

    def _to_lanes(self):
        """(codes, scales, biases, supers) in the lane layout: (N, P*256) codes, P panels of 16 blocks
        of 32; scales, biases and supers (Q4_K; else (N, 0), unread) zero-padded to whole panels
        (anonymous memory: the K/2 code bytes per row copied once; the others too when K is not a
        whole number of panels)."""
        n, k = self.shape
        panels = -(-k // (32 * quant.LANE_PANEL))
        codes = aligned_empty((n, panels * 256), np.uint8)
        quant.to_lanes(self.wq, codes)
        g = panels * quant.LANE_PANEL * 32 // self.group_size
        supers = np.empty((n, 0), np.float32) if self.supers is None else self.supers
        padded = []
        for a, width in ((self.scales, g), (self.scales if self.biases is None else self.biases, g),
                         (supers, 4 * panels if supers.shape[1] else 0)):
            if a.shape[1] < width:
                a, stored = np.zeros((n, width), a.dtype), a
                a[:, :stored.shape[1]] = stored
            padded.append(a)
        return (codes, *padded)

    def _own_group(self) -> MatvecGroup:
        if self._group is None:
            self._group = MatvecGroup((self,))
        return self._group

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        if self._q8_key() is not None:
            self._own_group()(x, (out,))
            return
        scales, biases = self._float_params()
        codes, bits = self._float_codes()
        xe, xo, xsum = self._buffers(x.shape[0])
        if bits == 4:
            quant.split_even_odd(x, xe, xo)
            quant.affine4_matvec((codes,), (scales,), (biases,), xe, xo, (out,))
        else:
            quant.group_sums(x, xsum, self.group_size)
            quant.affine8_matvec(codes, scales, biases, x, xsum, out)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        if self._q8_key() is not None:
            self._own_group().matmul(x, (out,))
            return
        scales, biases = self._float_params()
        codes, bits = self._float_codes()
        kernel = quant.affine4_matmul if bits == 4 else quant.affine8_matmul
        padded_matmul(lambda xp, op: kernel(codes, scales, biases, xp, op), x, out)

    def embed(self, ids: np.ndarray, out: np.ndarray) -> None:
        if not self._compact():
            if self._wq is None:  # only the rows asked for, from the lane copy
                quant.affine_embed(self._codes_of(ids), self.scales[ids], self.biases[ids], self.bits,
                                   np.arange(len(ids)), out)
            else:
                quant.affine_embed(self._wq, self.scales, self.biases, self.bits, ids, out)
            return
        codes, bits = self._float_codes(ids)  # only the rows asked for
        quant.affine_embed(codes, *self._float_params(ids), bits, np.arange(len(ids)), out)

    def row_f32(self) -> np.ndarray:
        """The dequantized matrix (tests and tools only)."""
        n, k = self.shape
        tile = np.empty((n, k), np.float32)
        codes, bits = self._float_codes()
        rows = quant.affine4_rows if bits == 4 else quant.affine8_rows
        rows(codes, *self._float_params(), 0, n, tile)
        return tile


class MatvecGroup:
    """Products of weights that share one input (q/k/v, gate/up, or one weight alone), set up once:
    int8-activation Affine weights of one layout run as one kernel launch that rounds the input
    once, for decode's few tokens and prefill's many alike (each row read once for all of them);
    4-bit weights on the float path (exact dots) of one layout decode in one launch too, after one
    split of the input; anything else runs each weight's own matvec or matmul (as do fused weights
    once one of them has its ``int8_activations`` switched: rebuild the group to fuse again)."""

    def __init__(self, ws):
        self.ws = tuple(ws)
        key = ws[0]._q8_key() if isinstance(ws[0], Affine) else None
        self.fused = key is not None and all(isinstance(w, Affine) and w._q8_key() == key for w in ws[1:])
        key4 = ws[0]._float4_key() if isinstance(ws[0], Affine) and len(ws) > 1 else None
        # 4-bit float-path weights (exact dots: the default model) of one layout: one split of x, one launch
        self.float4 = key4 is not None and all(isinstance(w, Affine) and w._float4_key() == key4 for w in ws[1:])
        if self.float4:
            self._f4_args = tuple(zip(*((w._float_codes()[0],) + w._float_params() for w in ws)))
            self._f4_bufs: dict = {}
        if self.fused:
            w0 = ws[0]
            pf8 = _PREFETCH_STREAMS
            # one token; a few (batch decode); AFFINE_MAX_B or more (prefill, eight-token batch decode:
            # 4-bit lane rows in pairs; int4-g64 batch-8 2560x9728 0.45 -> 0.40 ms, 151936x1024 2.91 -> 2.85)
            self._kernels = tuple(quant.affine_matvec_q8(w0.bits, w0.group_size // 32, w0.offset, batched, w0.lanes, pf8,
                                                         pairs) for batched, pairs in ((False, False), (True, False),
                                                                                        (True, w0.lanes)))
            self._args = tuple(zip(*(w._q8_args() for w in ws)))  # (wqs, scales, biases, supers)
            self._bufs: dict = {}
            # activation codes per token: K, or whole panels of the lane layout
            self._k = -(-w0.shape[1] // 512) * 512 if w0.lanes else w0.shape[1]

    def _runs_fused(self) -> bool:
        return self.fused and all(w.int8_activations for w in self.ws)

    def __call__(self, x: np.ndarray, outs: tuple) -> None:
        """outs[i] (B, N_i) = x (B, K) @ ws[i].T."""
        if not self._runs_fused():
            if self.float4 and not any(w.int8_activations and w._q8_kernel for w in self.ws):
                b = x.shape[0]
                bufs = self._f4_bufs.get(b)
                if bufs is None:
                    k2 = self.ws[0].shape[1] // 2
                    bufs = self._f4_bufs[b] = (aligned_empty((b, k2), np.float32), aligned_empty((b, k2), np.float32))
                quant.split_even_odd(x, *bufs)
                quant.affine4_matvec(*self._f4_args, *bufs, outs)
                return
            for w, out in zip(self.ws, outs):
                w.matvec(x, out)
            return
        xq, dx, xs = activation_buffers(self._bufs, x.shape[0], self._k)
        b = x.shape[0]
        self._kernels[0 if b == 1 else 1 if b < quant.AFFINE_MAX_B else 2](*self._args, x, xq, dx, xs, outs)

    def matmul(self, x: np.ndarray, outs: tuple) -> None:
        """outs[i] (T, N_i) = x (T, K) @ ws[i].T for prefill: the decode kernel when fused (its
        tokens go eight at a time past each decoded row), else each weight's own matmul."""
        if not self._runs_fused():
            for w, out in zip(self.ws, outs):
                w.matmul(x, out)
            return
        self(x, outs)


class Fp8Block:
    """e4m3 weights with one ``scale_inv`` per (block_n x block_k) tile: ``W = fp8 * scale_inv``."""

    def __init__(self, wq: np.ndarray, scale_inv: np.ndarray, block_n: int, block_k: int):
        self.wq = wq  # (N, K) uint8 e4m3
        self.scale_inv = scale_inv  # (ceil(N / block_n), ceil(K / block_k)) stored dtype
        self.block_n = block_n
        self.block_k = block_k
        self.kind = "fp8"
        self.shape = wq.shape
        self.nbytes = wq.nbytes + scale_inv.nbytes

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        quant.fp8_matvec(self.wq, self.scale_inv, self.block_n, self.block_k, x, out, _PREFETCH_STREAMS)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        padded_matmul(lambda xp, op: quant.fp8_matmul(self.wq, self.scale_inv, self.block_n, self.block_k, xp, op),
                      x, out)

    def embed(self, ids: np.ndarray, out: np.ndarray) -> None:
        tile = np.empty((1, self.shape[1]), np.float32)
        for t, i in enumerate(ids):
            quant.fp8_rows(self.wq, self.scale_inv, self.block_n, self.block_k, int(i), 1, tile)
            out[t] = tile[0]

    def row_f32(self) -> np.ndarray:
        n, k = self.shape
        tile = np.empty((n, k), np.float32)
        quant.fp8_rows(self.wq, self.scale_inv, self.block_n, self.block_k, 0, n, tile)
        return tile


AFFINE_BITS = (4, 8)
AFFINE_GROUPS = (32, 64, 128)


def affine_params(quantization: dict | None, module: str) -> tuple[int, int] | None:
    """(bits, group_size) for ``module`` under an MLX ``quantization`` dict, None if left unquantized."""
    if not quantization or "quant_method" in quantization:
        return None
    override = quantization.get(module)
    if override is False:
        return None
    q = override if isinstance(override, dict) else quantization
    mode = q.get("mode", quantization.get("mode", "affine"))
    if mode != "affine":
        raise EdgeQwenError(f"{module}: quantization mode {mode!r} is not supported (only 'affine')")
    bits, gs = q.get("bits"), q.get("group_size")
    if bits not in AFFINE_BITS or gs not in AFFINE_GROUPS:
        raise EdgeQwenError(f"{module}: unsupported quantization bits={bits} group_size={gs} "
                            f"(supported: bits {AFFINE_BITS}, group sizes {AFFINE_GROUPS})")
    return bits, gs


SCALE_DTYPES = ("BF16", "F16", "F32")


def load_affine(store: TensorStore, module: str, shape: tuple[int, int], bits: int, group_size: int) -> Affine:
    """``module``.weight/.scales/.biases as an Affine weight, every shape checked."""
    n, k = shape
    wname = module + ".weight"
    if k % group_size:
        raise EdgeQwenError(f"{store.where(wname)}: input size {k} is not a multiple of group size {group_size}")
    if store.dtype(wname) != "U32":
        raise EdgeQwenError(f"{store.where(wname)}: quantized weight must be U32, got {store.dtype(wname)}")
    _check_shape(store, wname, (n, k * bits // 32))
    parts = []
    for suffix in (".scales", ".biases"):
        name = module + suffix
        if name not in store:
            raise EdgeQwenError(f"{store.where(wname)}: quantized weight without {suffix[1:]} ({name!r} missing)")
        if store.dtype(name) not in SCALE_DTYPES:
            raise EdgeQwenError(f"{store.where(name)}: dtype {store.dtype(name)} is not BF16/F16/F32")
        got = store.shape(name)
        if tuple(got) != (n, k // group_size):
            raise EdgeQwenError(f"{store.where(name)}: shape {list(got)} does not match the weight "
                                f"({n} rows x {k // group_size} groups of {group_size})")
        parts.append(store.get(name))
    wq = store.get(wname).view(np.uint8)
    return Affine(wq, parts[0], parts[1], bits, group_size)


def load_fp8(store: TensorStore, module: str, shape: tuple[int, int], block: tuple[int, int]) -> Fp8Block:
    """``module``.weight (F8_E4M3) with ``.weight_scale_inv`` tiles as an Fp8Block weight."""
    wname, sname = module + ".weight", module + ".weight_scale_inv"
    _check_shape(store, wname, shape)
    if sname not in store:
        raise EdgeQwenError(f"{store.where(wname)}: FP8 weight without its scales ({sname!r} missing)")
    if store.dtype(sname) not in SCALE_DTYPES:
        raise EdgeQwenError(f"{store.where(sname)}: dtype {store.dtype(sname)} is not BF16/F16/F32")
    bn, bk = block
    want = (-(-shape[0] // bn), -(-shape[1] // bk))
    got = store.shape(sname)
    if tuple(got) != want:
        raise EdgeQwenError(f"{store.where(sname)}: shape {list(got)} does not match {list(want)} "
                            f"({bn}x{bk} tiles of a {shape[0]}x{shape[1]} weight)")
    return Fp8Block(store.get(wname), store.get(sname), bn, bk)


def fp8_block(quantization: dict | None) -> tuple[int, int] | None:
    """The (block_n, block_k) tile of an FP8 quantization_config, None for other configs."""
    if not quantization or quantization.get("quant_method") != "fp8":
        return None
    fmt = quantization.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise EdgeQwenError(f"FP8 format {fmt!r} is not supported (only e4m3)")
    block = quantization.get("weight_block_size") or [128, 128]
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)):
        raise EdgeQwenError(f"quantization_config.weight_block_size must be two positive integers, got {block!r}")
    if block[1] % 32:
        raise EdgeQwenError(f"FP8 column block {block[1]} is not supported (the kernels need a multiple of 32)")
    return block[0], block[1]


def load_linear(store: TensorStore, module: str, shape: tuple[int, int], quantization: dict | None):
    """The weight of ``module`` (a Hugging Face module name) in whatever format it is stored."""
    wname = module + ".weight"
    if wname not in store:
        raise EdgeQwenError(f"tensor {wname!r} is missing from the checkpoint")
    dtype = store.dtype(wname)
    if dtype == "F8_E4M3":
        block = fp8_block(quantization)
        if block is None:
            raise EdgeQwenError(f"{store.where(wname)}: FP8 weight but config.json has no FP8 quantization_config")
        return load_fp8(store, module, shape, block)
    if module + ".scales" in store or dtype == "U32":
        params = affine_params(quantization, module)
        if params is None:
            raise EdgeQwenError(f"{store.where(wname)}: quantized tensor but config.json has no 'quantization' "
                                f"entry for it")
        return load_affine(store, module, shape, *params)
    return load_dense(store, wname, shape)


GGUF_BLOCK_IDS = {"Q8_0": gguf_blocks.Q8_0, "Q4_0": gguf_blocks.Q4_0, "Q4_1": gguf_blocks.Q4_1,
                  "Q4_K": gguf_blocks.Q4_K, "Q6_K": gguf_blocks.Q6_K}


def _f16_if_exact(a: np.ndarray) -> np.ndarray:
    """a (f32) as the int16 view of float16 when every value survives the trip, else a itself."""
    h = a.astype(np.float16)
    return h.view(np.int16) if np.array_equal(h.astype(np.float32), a) else a


def gguf_matrix(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> Affine:
    """A llama.cpp block-quantized matrix (raw: (N, row_bytes) u8, as mapped) rewritten exactly in the
    MLX affine layout (kernels.gguf_blocks), its scales as compact as in the file: Q8_0 / Q4_0 / Q4_1
    one f16 scale per 32 weights (Q4_1 an f16 bias too; Q4_0's and Q8_0's biases are fixed multiples
    of the scale), Q4_K 6-bit scales and mins per 32 with f32 factors per 256, Q6_K int8 scales per
    16 with a factor per 256. All run on the int8-activation kernels, as llama.cpp runs them on its
    rounded activations. Costs one parallel pass at load and a copy in memory (1.0-1.03x the file's
    bytes)."""
    n, k = shape
    if kind in ("Q8_0", "Q4_0", "Q4_1"):
        bits = 8 if kind == "Q8_0" else 4
        wq = np.empty((n, k * bits // 8), np.uint8)
        scales = np.empty((n, k // 32), np.float32)
        biases = np.empty((n, k // 32) if kind == "Q4_1" else (n, 0), np.float32)
        gguf_blocks.to_affine(raw, GGUF_BLOCK_IDS[kind], wq, scales, biases)
        if kind == "Q4_1":
            return Affine(wq, _f16_if_exact(scales), _f16_if_exact(biases), 4, 32, kind=kind)
        return Affine(wq, _f16_if_exact(scales), None, bits, 32, kind=kind, offset=128 if bits == 8 else 8)
    supers = np.empty((n, 2 * k // 256), np.float32)
    if kind == "Q4_K":
        wq = np.empty((n, k // 2), np.uint8)
        scales = np.empty((n, k // 32), np.uint8)
        mins = np.empty((n, k // 32), np.uint8)
        gguf_blocks.q4_k_to_affine(raw, wq, scales, mins, supers)
        return Affine(wq, scales, mins, 4, 32, kind=kind, supers=supers)
    wq = np.empty((n, k * 3 // 4), np.uint8)
    scales = np.empty((n, k // 16), np.int8)
    gguf_blocks.q6_k_to_affine(raw, wq, scales, supers)
    return Affine(wq, scales, None, 6, 16, kind=kind, offset=32, supers=supers)


def load_gguf_tensor(gf, name: str, shape: tuple[int, ...]):
    """A GGUF tensor as a weight (matrices) or a float32 vector (norms, biases), shape-checked."""
    if name not in gf.tensors:
        raise EdgeQwenError(f"{gf.path}: tensor {name!r} is missing")
    kind, got, data = gf.tensors[name]
    if tuple(got) != tuple(shape):
        raise EdgeQwenError(f"{gf.path}: tensor {name!r} has shape {list(got)}, the metadata implies {list(shape)}")
    if kind in GGUF_BLOCK_IDS:
        if len(shape) != 2:
            raise EdgeQwenError(f"{gf.path}: tensor {name!r} is {kind} but not a matrix")
        return gguf_matrix(data, kind, shape)
    dense = Dense(data, {"F32": "f32", "F16": "f16", "BF16": "bf16"}[kind])
    return dense if len(shape) == 2 else dense.row_f32()
