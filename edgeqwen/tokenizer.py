"""The tokenizer: a thin wrapper over `tokenizers`, plus a UTF-8-safe streaming detokenizer."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from .errors import EdgeQwenError


class Tokenizer:
    """Encode/decode text; knows the special ids and the chat template of its model."""

    def __init__(self, backend, chat_template: str | None = None, eos_ids=(), bos_token: str | None = None,
                 eos_token: str | None = None):
        self.backend = backend  # tokenizers.Tokenizer
        self.chat_template = chat_template
        self.eos_ids = list(eos_ids)
        self.bos_token = bos_token
        self.eos_token = eos_token
        # id -> bytes for byte-level BPE vocabularies (added tokens now, the rest as first met);
        # None where the vocabulary is not byte-level
        self._bytes = ({i: t.content.encode() for i, t in backend.get_added_tokens_decoder().items()}
                       if type(backend.decoder).__name__ == "ByteLevel" else None)

    @classmethod
    def from_dir(cls, directory: str | Path, config=None) -> "Tokenizer":
        """tokenizer.json (+ tokenizer_config.json / chat_template.jinja) of a model directory."""
        from tokenizers import Tokenizer as HFTokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise EdgeQwenError(f"{directory}: no tokenizer.json")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise EdgeQwenError(f"{path}: cannot read tokenizer ({str(e).splitlines()[0]})") from None
        tc = {}
        tc_path = directory / "tokenizer_config.json"
        if tc_path.exists():
            try:
                tc = json.loads(tc_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise EdgeQwenError(f"{tc_path}: not valid JSON ({e})") from None
        template = tc.get("chat_template")
        jinja = directory / "chat_template.jinja"
        if jinja.exists():
            template = jinja.read_text(encoding="utf-8")
        eos_ids = list(config.eos_ids()) if config is not None else []
        eos_token = _token_text(tc.get("eos_token"))
        if eos_token is not None:
            eid = backend.token_to_id(eos_token)
            if eid is not None and eid not in eos_ids:
                eos_ids.append(eid)
        return cls(backend, template, eos_ids, _token_text(tc.get("bos_token")), eos_token)

    @classmethod
    def from_gguf(cls, gf, config=None) -> "Tokenizer":
        """A byte-level BPE tokenizer built from GGUF metadata (tokens, merges, token types, pre)."""
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        where = str(gf.path)
        model = gf.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise EdgeQwenError(f"{where}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
        tokens = gf.get("tokenizer.ggml.tokens") or []
        merges = gf.get("tokenizer.ggml.merges") or []
        types = gf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        pre = gf.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise EdgeQwenError(f"{where}: pre-tokenizer {pre!r} is not supported "
                                f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        vocab = {}
        for i, tok in enumerate(tokens):
            vocab.setdefault(tok, i)
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        backend = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in ("llama-bpe",)))
        splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZERS[pre]]
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        special = [AddedToken(tok, special=True, normalized=False) for tok, t in zip(tokens, types) if t in (3, 4)]
        backend.add_special_tokens(special)
        eos_ids = list(config.eos_ids()) if config is not None else []
        eot = gf.get("tokenizer.ggml.eot_token_id")
        if eot is not None and eot not in eos_ids:
            eos_ids.append(eot)
        im_end = vocab.get("<|im_end|>")
        if im_end is not None and im_end not in eos_ids:
            eos_ids.append(im_end)
        eos = gf.get("tokenizer.ggml.eos_token_id")
        bos = gf.get("tokenizer.ggml.bos_token_id")
        return cls(backend, gf.get("tokenizer.chat_template"), eos_ids,
                   tokens[bos] if bos is not None and bos < len(tokens) else None,
                   tokens[eos] if eos is not None and eos < len(tokens) else None)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it become their ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def token_bytes(self, ids) -> bytes | None:
        """The bytes ``ids`` stand for, for byte-level BPE vocabularies (Qwen, GPT-2, SmolLM2); None
        where a token is not byte-level (then only the decoded text is known)."""
        if self._bytes is None:
            return None
        out = []
        for i in ids:
            b = self._bytes.get(i)
            if b is None:
                piece = self.backend.id_to_token(i)
                if piece is None or any(ch not in _UNICODE_TO_BYTE for ch in piece):
                    return None
                b = self._bytes[i] = bytes(_UNICODE_TO_BYTE[ch] for ch in piece)
            out.append(b)
        return b"".join(out)

    def detokenizer(self, skip_special_tokens: bool = False) -> "StreamDetokenizer":
        return StreamDetokenizer(self, skip_special_tokens)


_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
          r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# GGUF `tokenizer.ggml.pre` -> the regex splits applied before byte-level BPE (as llama.cpp does)
PRE_TOKENIZERS = {"default": [_GPT2], "gpt2": [_GPT2], "qwen2": [_QWEN2], "llama-bpe": [_LLAMA3],
                  "smollm": [r"\p{N}", _GPT2]}


def _token_text(tok):
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def _byte_level_chars() -> dict[int, str]:
    # byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes stand for
    # themselves, the others take the code points from 256 on, in byte order
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_UNICODE_TO_BYTE = {c: b for b, c in _byte_level_chars().items()}


def _ends_mid_character(data: bytes) -> bool:
    # True when data ends inside a UTF-8 sequence that more bytes could complete
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    dec.decode(data, final=False)
    return bool(dec.getstate()[0])


class StreamDetokenizer:
    """Turns a stream of ids into text pieces, never emitting half of a UTF-8 character.

    It decodes a short window of recent tokens and emits only the text beyond what was already
    shown; while the window ends in an incomplete byte sequence (U+FFFD), it waits for more.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # tokens already emitted

    def _cut(self, full: str) -> bool:
        # does the window end in the middle of a character? From the tokens' bytes where the
        # vocabulary is byte-level (a U+FFFD in the text itself is then a character like any
        # other), else from the decoded text
        data = self.tokenizer.token_bytes(self.ids[self.prefix:])
        if data is None:
            return full.endswith("\ufffd")
        return _ends_mid_character(data)

    def add(self, token: int) -> str:
        """Feed one id; return the newly completed text (possibly empty)."""
        self.ids.append(int(token))
        decode = self.tokenizer.decode
        shown = decode(self.ids[self.prefix:self.read], self.skip)
        full = decode(self.ids[self.prefix:], self.skip)
        if len(full) > len(shown) and not self._cut(full):
            self.prefix, self.read = self.read, len(self.ids)
            return full[len(shown):]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end of the stream; bytes of a character cut off by the end are dropped."""
        decode = self.tokenizer.decode
        shown = decode(self.ids[self.prefix:self.read], self.skip)
        full = decode(self.ids[self.prefix:], self.skip)
        cut = self._cut(full)
        self.prefix = self.read = len(self.ids)
        tail = full[len(shown):]
        return tail[:-1] if cut and tail.endswith("\ufffd") else tail
