"""Prepared data: a tokenizer and the packed token blocks, cached once per (corpus, tokenizer, seq_len).

prepare_data runs corpus (trainers/corpora.py) -> document split -> tokenizer (trainers/tokenizer.py)
-> packing -> cache, so a sweep of a hundred runs tokenizes once. Packing: every document is followed
by `<eos>`, the documents are concatenated in order and cut into `seq_len` blocks; the tail shorter
than a block is dropped. train_batch draws blocks from a seeded per-epoch permutation.

Cache layout under the cache root (`data.cache_dir` when set, else the `cache_root` argument):

  sources/<key>.json   cheap source fingerprint -> corpus digest, so a warm call reads no text
  tokenizers/<key>/    save_pretrained output; key = hash(training-text identity, vocab size, settings)
  data/<digest>/       train.npy, val.npy ([blocks, seq_len], uint16 when vocab_size <= 65536 else
                       int32), val_block_bytes.npy, meta.json
  hf/                  the Arrow copies `datasets` makes of local corpus files
  locks/, tmp/         flock files; staging folders

Each entry is built in tmp/ and renamed into place (atomic within one filesystem) while holding an
flock on locks/<name>.lock, so two processes preparing the same data build it once and neither ever
sees half of it: an entry that exists is complete, and a failed build leaves nothing behind.

Bits per byte: every validation token is given the UTF-8 bytes of the text it covers, from the
tokenizer's character offsets (a character split over several byte-level tokens counts with the
first); `<eos>` carries whatever bytes of its document no token covered (normally none), so a
document's tokens sum to exactly its UTF-8 length. val_bytes_per_token is
bytes / tokens over all validation blocks; validation_n_bytes gives the exact count of a prefix:
bits_per_byte = nats_per_token * n_tokens / (ln 2 * n_bytes).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from scaling.errors import UserError
from scaling.locks import flock
from trainers import corpora
from trainers import tokenizer as tokenization
from trainers.tokenizer import load_tokenizer  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when packing or the cached files change: it invalidates data/ entries
_ENCODE_CHARS = 8_000_000  # characters per encode_batch call: bounds memory on large corpora
_COPY_ROWS = 1 << 16  # blocks per chunk when copying / counting over a memory map


@dataclass(frozen=True, eq=False)
class PreparedData:
    tokenizer_dir: Path  # saved fast tokenizer (save_pretrained output)
    train_blocks: np.ndarray  # [n_train_blocks, seq_len], memory-mapped from the cache
    val_blocks: np.ndarray  # [n_val_blocks, seq_len], memory-mapped from the cache
    val_bytes_per_token: float  # UTF-8 bytes of validation text per validation token
    mask_token_id: int
    eos_token_id: int
    vocab_size: int  # == DataSpec.vocab_size (model embedding rows)
    unigram_entropy_nats: float  # entropy of the train token unigram distribution
    digest: str  # identifies corpus + split + tokenizer + seq_len; the cache folder's name
    val_block_bytes: np.ndarray  # [n_val_blocks] int64: UTF-8 bytes of text each block covers

    @property
    def seq_len(self) -> int:
        return int(self.train_blocks.shape[1])


def prepare_data(spec, seq_len: int, cache_root: Path) -> PreparedData:
    """Tokenizer and packed blocks for `spec` (a DataSpec) at `seq_len`, from the cache when there.
    The cache lives in `spec.cache_dir` when set, else in `cache_root`. A warm call reads two small
    JSON files and memory-maps the blocks: no text is read, neither datasets nor transformers is
    imported (hub: corpora have no cheap fingerprint, so they are read and hashed each call).

    Raises UserError for a missing or unreadable corpus, a vocabulary too small for the tokenizer,
    an empty corpus or split, and a seq_len longer than the training or validation split."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    root = Path(spec.cache_dir or cache_root).expanduser()
    if spec.tokenizer_path is None:
        tokenization.check_trained_vocab_size(spec.vocab_size)
    fingerprint = corpora.source_fingerprint(spec.corpus, spec.text_field)
    source = _read_json(root / "sources" / f"{fingerprint}.json") if fingerprint else None
    if source is not None:
        digest, tokenizer_key = _keys(spec, seq_len, source)
        if (root / "data" / digest).is_dir() and (root / "tokenizers" / tokenizer_key).is_dir():
            return _open(root, digest)

    corpus = corpora.load_corpus(spec.corpus, spec.text_field, root / "hf")
    source = {"name": corpus.name, "corpus_digest": corpora.corpus_digest(corpus),
              "own_split": corpus.own_val is not None}
    if fingerprint:
        _write_json(root / "sources" / f"{fingerprint}.json", source)
    digest, tokenizer_key = _keys(spec, seq_len, source)
    if not (root / "data" / digest).is_dir():
        train, val = corpora.split_corpus(corpus, spec.val_fraction, spec.split_seed, spec.corpus)
        tokenizer_dir = root / "tokenizers" / tokenizer_key
        _build_once(root, tokenizer_dir, lambda out: _build_tokenizer(spec, train, out))
        _build_once(root, root / "data" / digest,
                    lambda out: _build_blocks(spec, seq_len, tokenizer_key, tokenizer_dir, train, val, out))
    return _open(root, digest)


def train_batch(data: PreparedData, step: int, global_batch_seqs: int, seed: int,
                start: int = 0, count: int | None = None) -> torch.LongTensor:
    """Rows [start, start + count) of the global batch of `step`: LongTensor[count, seq_len].

    The global batch of step s is positions [s * B, (s + 1) * B) of an endless stream that visits
    every train block once per epoch, in the order of a permutation seeded by (seed, epoch). So
    the data order is a pure function of (seed, step): resuming at step s reproduces it exactly,
    and the ranks' slices tile the global batch."""
    count = global_batch_seqs - start if count is None else count
    if step < 0 or start < 0 or count < 0 or start + count > global_batch_seqs:
        raise ValueError(f"bad slice: step {step}, rows [{start}, {start + count}) of {global_batch_seqs}")
    n_blocks = len(data.train_blocks)
    positions = step * global_batch_seqs + start + np.arange(count, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n_blocks)
    rows = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        inside = epochs == epoch
        rows[inside] = _epoch_permutation(n_blocks, seed, int(epoch))[offsets[inside]]
    return torch.from_numpy(data.train_blocks[rows].astype(np.int64))


def validation_blocks(data: PreparedData, n_tokens: int) -> torch.LongTensor:
    """The first n_tokens // seq_len validation blocks (all of them when the split is shorter)."""
    return torch.from_numpy(np.asarray(data.val_blocks[:_n_val_blocks(data, n_tokens)], dtype=np.int64))


def validation_n_bytes(data: PreparedData, n_tokens: int) -> int:
    """UTF-8 bytes of the text covered by exactly the blocks validation_blocks returns."""
    return int(data.val_block_bytes[:_n_val_blocks(data, n_tokens)].sum())


def _n_val_blocks(data: PreparedData, n_tokens: int) -> int:
    if len(data.val_blocks) < 1:
        raise UserError(f"seq_len {data.seq_len} is longer than the validation split ({data.val_blocks.size} "
                        "tokens); lower recipe.seq_len or raise data.val_fraction")
    if n_tokens < data.seq_len:
        raise UserError(f"evaluation.n_tokens {n_tokens} is shorter than one sequence (recipe.seq_len "
                        f"{data.seq_len}); raise evaluation.n_tokens to >= {data.seq_len}")
    return min(n_tokens // data.seq_len, len(data.val_blocks))


@functools.lru_cache(maxsize=2)  # a global batch spans at most two epochs when B <= n_blocks
def _epoch_permutation(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    dtype = np.int32 if n_blocks < 2**31 else np.int64
    return np.random.default_rng([seed % 2**64, epoch]).permutation(n_blocks).astype(dtype)


# ---------------------------------------------------------------- cache keys and entries


def _keys(spec, seq_len: int, source: dict) -> tuple[str, str]:
    """(data digest, tokenizer key). The training text is identified by the corpus digest and,
    for corpora split here, the split settings."""
    text_id = [source["corpus_digest"]]
    if not source["own_split"]:
        text_id += [f"val_fraction={spec.val_fraction!r}", f"split_seed={spec.split_seed}"]
    if spec.tokenizer_path is None:
        settings = json.dumps(tokenization.TRAINED_SETTINGS, sort_keys=True)
        tokenizer_key = f"bpe{spec.vocab_size}-" + _hash([*text_id, str(spec.vocab_size), settings])[:16]
    else:
        tokenizer_key = "pretrained-" + _hash([tokenization.pretrained_fingerprint(spec.tokenizer_path)])[:16]
    parts = [*text_id, tokenizer_key, str(spec.vocab_size), str(seq_len), f"format-v{FORMAT_VERSION}"]
    return f"{source['name']}-v{spec.vocab_size}-L{seq_len}-{_hash(parts)[:16]}", tokenizer_key


def _open(root: Path, digest: str) -> PreparedData:
    folder = root / "data" / digest
    meta = _read_json(folder / "meta.json")
    return PreparedData(
        tokenizer_dir=root / "tokenizers" / meta["tokenizer_key"],
        train_blocks=np.load(folder / "train.npy", mmap_mode="r"),
        val_blocks=np.load(folder / "val.npy", mmap_mode="r"),
        val_bytes_per_token=meta["val_bytes_per_token"],
        mask_token_id=meta["mask_token_id"], eos_token_id=meta["eos_token_id"],
        vocab_size=meta["vocab_size"], unigram_entropy_nats=meta["unigram_entropy_nats"],
        digest=digest, val_block_bytes=np.load(folder / "val_block_bytes.npy"))


def _build_once(root: Path, final: Path, build) -> None:
    """Run build(staging_folder) and rename the folder to `final`, unless `final` exists; under an
    flock so concurrent callers wait for the first and then reuse its result."""
    if final.is_dir():
        return
    with _flock(root / "locks" / f"{final.parent.name}-{final.name}.lock"):
        if final.is_dir():
            return
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=root / "tmp"))
        try:
            build(staging)
            try:
                os.rename(staging, final)
            except OSError:  # lost a race the lock did not prevent (a filesystem without flock):
                if not final.is_dir():  # the winner's entry is the same content, keep it
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_tokenizer(spec, train, out: Path) -> None:
    if spec.tokenizer_path is None:
        log.info("training a %d-entry byte-level BPE on %d documents", spec.vocab_size, len(train))
        tok = tokenization.train_bpe(corpora.iter_texts(train), spec.vocab_size, n_texts=len(train))
    else:
        tok = tokenization.load_pretrained(spec.tokenizer_path, spec.vocab_size)
    tok.save_pretrained(str(out))


def _build_blocks(spec, seq_len, tokenizer_key, tokenizer_dir, train, val, out: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    if len(tok) > spec.vocab_size:  # a cached pretrained tokenizer first checked at another size
        raise UserError(f"data.vocab_size {spec.vocab_size} is smaller than the tokenizer ({len(tok)} "
                        f"entries); raise data.vocab_size to >= {len(tok)}")
    dtype = np.uint16 if spec.vocab_size <= 2**16 else np.int32
    log.info("tokenizing and packing %d train and %d validation documents", len(train), len(val))
    n_train = _pack(tok, corpora.iter_texts(train), seq_len, dtype, out / "train.npy")
    if n_train < seq_len:
        raise UserError(f"seq_len {seq_len} is longer than the training split ({n_train} tokens); "
                        "lower recipe.seq_len or give a larger data.corpus")
    n_val = _pack(tok, corpora.iter_texts(val), seq_len, dtype, out / "val.npy", out / "val_block_bytes.npy")
    if n_val < seq_len:
        raise UserError(f"seq_len {seq_len} is longer than the validation split ({n_val} tokens); "
                        "lower recipe.seq_len or raise data.val_fraction")
    train_blocks = np.load(out / "train.npy", mmap_mode="r")
    val_blocks, block_bytes = np.load(out / "val.npy", mmap_mode="r"), np.load(out / "val_block_bytes.npy")
    _write_json(out / "meta.json", {
        "format_version": FORMAT_VERSION, "corpus": spec.corpus, "tokenizer_key": tokenizer_key,
        "vocab_size": spec.vocab_size, "tokenizer_entries": len(tok), "seq_len": seq_len,
        "eos_token_id": tok.eos_token_id, "mask_token_id": tok.mask_token_id,
        "n_train_documents": len(train), "n_val_documents": len(val),
        "n_train_tokens": int(train_blocks.size), "n_val_tokens": int(val_blocks.size),
        "n_train_tokens_unpacked": n_train, "n_val_tokens_unpacked": n_val,
        "val_bytes": int(block_bytes.sum()), "val_bytes_per_token": float(block_bytes.sum() / val_blocks.size),
        "unigram_entropy_nats": _unigram_entropy_nats(train_blocks, spec.vocab_size)})


# ---------------------------------------------------------------- packing


def _pack(tok, texts: Iterable[str], seq_len: int, dtype, out: Path, bytes_out: Path | None = None) -> int:
    """Tokenize `texts`, each followed by eos, and write the full seq_len blocks to `out` (.npy);
    with `bytes_out`, also the UTF-8 bytes each block covers. Returns the token count before
    cutting (no file is written when it is under one block)."""
    backend, eos = tok.backend_tokenizer, tok.eos_token_id
    stream_path, bytes_path = out.with_suffix(".ids.bin"), out.with_suffix(".bytes.bin")
    n_tokens = 0
    with open(stream_path, "wb") as ids_file, open(bytes_path, "wb") as bytes_file:
        for chunk in _chunks(texts):
            if bytes_out is None:  # no offsets needed: the faster path
                encodings = backend.encode_batch_fast(chunk, add_special_tokens=False)
            else:
                encodings = backend.encode_batch(chunk, add_special_tokens=False)
                per_token = [_token_bytes(text, enc.offsets) for text, enc in zip(chunk, encodings)]
                bytes_file.write(np.concatenate(per_token).astype(np.int32).tobytes())
            ids = []
            for enc in encodings:
                ids.extend(enc.ids)
                ids.append(eos)
            ids_file.write(np.asarray(ids, dtype=dtype).tobytes())
            n_tokens += len(ids)
    n_blocks = n_tokens // seq_len
    if n_blocks:
        stream = np.memmap(stream_path, dtype=dtype, mode="r", shape=(n_blocks, seq_len))
        blocks = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n_blocks, seq_len))
        for i in range(0, n_blocks, _COPY_ROWS):
            blocks[i:i + _COPY_ROWS] = stream[i:i + _COPY_ROWS]
        blocks.flush()
        del blocks, stream
        if bytes_out is not None:
            token_bytes = np.memmap(bytes_path, dtype=np.int32, mode="r", shape=(n_blocks, seq_len))
            np.save(bytes_out, token_bytes.sum(axis=1, dtype=np.int64))
            del token_bytes
    stream_path.unlink()
    bytes_path.unlink()
    return n_tokens


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    chunk, n_chars = [], 0
    for text in texts:
        chunk.append(text)
        n_chars += len(text)
        if n_chars >= _ENCODE_CHARS:
            yield chunk
            chunk, n_chars = [], 0
    if chunk:
        yield chunk


def _token_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """UTF-8 bytes per token of one document, then of its eos: token j gets the bytes between the
    previous token's end and its own (character offsets), eos the rest of the document."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    char_bytes = 1 + (codepoints >= 0x80).astype(np.int64) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(char_bytes)])  # byte offset of each character boundary
    ends = byte_at[np.fromiter((end for _, end in offsets), dtype=np.int64, count=len(offsets))]
    ends = np.maximum.accumulate(np.concatenate([[0], ends, [byte_at[-1]]]))
    return np.diff(ends)


def _unigram_entropy_nats(blocks: np.ndarray, vocab_size: int) -> float:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(blocks), _COPY_ROWS):
        counts += np.bincount(np.asarray(blocks[i:i + _COPY_ROWS]).ravel(), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- small file helpers


def _hash(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_json(path: Path, obj: dict) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)
