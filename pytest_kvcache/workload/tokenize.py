"""Offline tokenizers for replayed text (``--kv-tokenizer``): token counts and token ids.

Three kinds, none of which downloads anything:

- ``estimate`` (the default): chars/4. A message of ``n`` characters is ``ceil(n / 4)``
  tokens; token ``i`` gets an id derived from characters ``4i..4i+3`` of the message (a
  32-bit mix of their code points), so equal text at the start of two messages gives equal
  ids, and so equal KV block keys, as a real tokenizer would. The counts are an estimate and
  every report says so ("chars/4 estimate").
- an encoding shipped inside the ``quicktok-v1`` package (its vocabularies are in the wheel):
  ``llama3``, ``cl100k`` (``cl100k_base``), ``o200k`` (``o200k_base``), ``o200k_harmony``,
  ``qwen3``. Ids are tiktoken's / Meta's / Qwen's exactly (quicktok checks them), special
  tokens in the text are encoded as plain text (tiktoken's ``encode_ordinary``).
- a ``tokenizer.json`` file the user gives, read by Hugging Face ``tokenizers`` (no special
  tokens added).

Both packages come with the ``tokenizers`` extra: ``pip install 'pytest-kvcache[tokenizers]'``.
Every tokenizer encodes a batch of texts into one flat ``uint32`` id array plus ``int64``
offsets (text ``i`` is ``ids[offsets[i]:offsets[i+1]]``), so 100 MB of text never becomes
Python lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

ESTIMATE = "estimate"
QUICKTOK_ENCODINGS = {"llama3": "llama3", "cl100k": "cl100k_base", "cl100k_base": "cl100k_base",
                      "o200k": "o200k_base", "o200k_base": "o200k_base", "o200k_harmony": "o200k_harmony",
                      "qwen3": "qwen3"}
_INSTALL = "pip install 'pytest-kvcache[tokenizers]'"


class Tokenizer:
    """``name``: what reports call it; ``key``: what a cache of its output is keyed on (changes
    when its ids could change: the package version, the vocabulary file's SHA-256)."""

    name: str
    key: str

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of every text: (flat uint32 ids, int64 offsets of length len(texts) + 1)."""
        raise NotImplementedError


class EstimateTokenizer(Tokenizer):
    """chars/4, with ids derived from the characters (see the module text)."""

    name = "chars/4 estimate"
    key = "estimate-v1"

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        counts = np.fromiter(((len(t) + 3) // 4 for t in texts), dtype=np.int64, count=len(texts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.uint32)
        first = 0
        while first < len(texts):  # batches of about 4 M characters: memory stays small
            end = int(np.searchsorted(offsets, offsets[first] + (1 << 20), side="right"))
            end = max(end - 1, first + 1)
            ids[offsets[first]:offsets[end]] = self._ids(texts[first:end])
            first = end
        return ids, offsets

    @staticmethod
    def _ids(texts: Sequence[str]) -> np.ndarray:
        # every text padded with NULs to a multiple of 4 characters, so its tokens start at its start
        padded = "".join(t + "\0" * (-len(t) % 4) for t in texts)
        points = np.frombuffer(padded.encode("utf-32-le", "surrogatepass"), dtype="<u4").reshape(-1, 4)
        mixed = np.zeros(len(points), dtype=np.uint32)
        for col, mult in enumerate((0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)):
            mixed ^= points[:, col] * np.uint32(mult)  # wraps modulo 2**32, as intended
            mixed = (mixed << np.uint32(13)) | (mixed >> np.uint32(19))  # position matters
        mixed ^= mixed >> np.uint32(16)
        mixed *= np.uint32(0x7FEB352D)
        return mixed ^ (mixed >> np.uint32(15))


class QuicktokTokenizer(Tokenizer):
    """An encoding bundled with quicktok-v1 (no download). Its vocabulary is loaded at the first
    ``encode_batch`` (about a second), so a run whose tokenization is cached never loads it."""

    def __init__(self, encoding: str):
        try:
            import quicktok
        except ImportError:
            raise ConfigError(f"--kv-tokenizer {encoding} needs the quicktok-v1 package, which ships its vocabularies "
                              f"(no download): {_INSTALL}, or use --kv-tokenizer estimate.") from None
        self._quicktok, self._encoding, self._enc = quicktok, encoding, None
        self.name = f"{encoding} (quicktok {quicktok.__version__})"
        self.key = f"quicktok-{quicktok.__version__}-{encoding}"

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._enc is None:
            try:
                self._enc = self._quicktok.get_encoding(self._encoding)
            except Exception as exc:  # a broken install: the package's own error says what is missing
                raise ConfigError(f"--kv-tokenizer {self._encoding}: quicktok could not load it ({exc}); reinstall "
                                  f"with {_INSTALL}.") from None
        if not texts:
            return np.zeros(0, np.uint32), np.zeros(1, np.int64)
        try:
            ids, offsets = self._enc.encode_batch(list(texts), 0, False)  # specials as plain text
        except TypeError:  # a lone surrogate (a JSON "\ud800" escape) is not text it can take
            ids, offsets = self._enc.encode_batch(utf8_safe(texts), 0, False)
        return np.asarray(ids, dtype=np.uint32), np.asarray(offsets, dtype=np.int64)


class HFTokenizer(Tokenizer):
    """A user's ``tokenizer.json`` through Hugging Face ``tokenizers`` (no special tokens added)."""

    def __init__(self, path: Path):
        try:
            import tokenizers
        except ImportError:
            raise ConfigError(f"--kv-tokenizer {path} is a tokenizer.json, read by the Hugging Face tokenizers "
                              f"package: {_INSTALL}, or use --kv-tokenizer estimate.") from None
        try:
            data = path.read_bytes()
            self._tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"--kv-tokenizer {path}: cannot read it ({exc.strerror}); give an existing "
                              "tokenizer.json.") from None
        except Exception as exc:  # tokenizers raises its own exception type for a bad file
            raise ConfigError(f"--kv-tokenizer {path} is not a tokenizer.json that Hugging Face tokenizers can "
                              f"load ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); give the "
                              "model's tokenizer.json.") from None
        digest = hashlib.sha256(data).hexdigest()
        self.name = f"{path.name} (tokenizers {tokenizers.__version__}, sha256 {digest[:12]})"
        self.key = f"hf-{tokenizers.__version__}-{digest}"

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros(len(texts) + 1, dtype=np.int64)
        parts = []
        step = 4096  # bounded memory: the Encoding objects of one step at a time
        for first in range(0, len(texts), step):
            batch = list(texts[first:first + step])
            try:
                encoded = self._tok.encode_batch(batch, add_special_tokens=False)
            except (TypeError, UnicodeError, ValueError):  # lone surrogates, as above
                encoded = self._tok.encode_batch(utf8_safe(batch), add_special_tokens=False)
            for i, enc in enumerate(encoded):
                parts.append(np.asarray(enc.ids, dtype=np.uint32))
                counts[first + i + 1] = len(enc.ids)
        ids = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        return ids, np.cumsum(counts)


def utf8_safe(texts: Sequence[str]) -> list[str]:
    """The texts with lone surrogates (valid in JSON escapes, not in UTF-8) replaced by '?'."""
    return [t.encode("utf-8", "replace").decode("utf-8") for t in texts]


def resolve_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer ``--kv-tokenizer`` names. Raises ConfigError naming the fix (an unknown
    name, a missing package, an unreadable tokenizer.json)."""
    spec = (spec or ESTIMATE).strip()
    if spec == ESTIMATE:
        return EstimateTokenizer()
    if spec in QUICKTOK_ENCODINGS:
        return QuicktokTokenizer(QUICKTOK_ENCODINGS[spec])
    path = Path(spec).expanduser()
    if path.suffix == ".json" or path.exists():
        if path.is_dir() and (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        return HFTokenizer(path)
    raise ConfigError(f"--kv-tokenizer {spec!r} is not a known tokenizer: give estimate (chars/4), one of "
                      f"{', '.join(sorted(QUICKTOK_ENCODINGS))} (shipped by quicktok-v1, offline), or the path of "
                      "a tokenizer.json (Hugging Face tokenizers).")
