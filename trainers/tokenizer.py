"""The tokenizer: a byte-level BPE trained here, or a saved one loaded from `data.tokenizer_path`.

Trained: `tokenizers` BPE over the GPT-2 byte alphabet (ByteLevel pre-tokenizer with the GPT-2
split regex, no prefix space, ByteLevel decoder), so any text round-trips and nothing is <unk>.
Its vocabulary is exactly `vocab_size` entries when the training text has enough distinct pairs to
merge (always, for the shipped corpora): ids 0 and 1 are the special tokens `<eos>` (document
separator) and `[MASK]` (the absorbing state of masked diffusion), then the 256 bytes, then merges.
There is no `<pad>`: blocks are packed full, so nothing is ever padded.

Loaded: any transformers fast tokenizer folder (save_pretrained output) or a tokenizers
`tokenizer.json`. Its eos token, if it has one, separates documents; `<eos>` and `[MASK]` are added
when it has no eos or mask token. Its final size must fit `vocab_size` (the model's embedding rows).

Either way the result is a transformers `PreTrainedTokenizerFast` (in transformers 5 an alias of
`TokenizersBackend`), saved with save_pretrained beside the data and later beside the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from scaling.errors import UserError

EOS, MASK = "<eos>", "[MASK]"
SPECIAL_TOKENS = (EOS, MASK)
N_BYTES = 256  # the byte-level alphabet: every byte is a token, so no text is out of vocabulary
# Everything that shapes the trained tokenizer besides its training text and size (cache key).
TRAINED_SETTINGS = {"model": "bpe", "pre_tokenizer": "byte_level", "use_regex": True,
                    "add_prefix_space": False, "special_tokens": list(SPECIAL_TOKENS), "version": 1}
# Files that define a saved tokenizer (hashed for its cache key; model weights beside it are not).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


def min_trained_vocab_size() -> int:
    return N_BYTES + len(SPECIAL_TOKENS)


def check_trained_vocab_size(vocab_size: int) -> None:
    need = min_trained_vocab_size()
    if vocab_size < need:
        raise UserError(f"data.vocab_size {vocab_size} is too small for the {N_BYTES}-byte alphabet and "
                        f"the special tokens {', '.join(SPECIAL_TOKENS)}; raise data.vocab_size to >= {need}")


def train_bpe(texts: Iterable[str], vocab_size: int, n_texts: int | None = None):
    """A byte-level BPE with `vocab_size` entries (fewer only if the text runs out of pairs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_trained_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=n_texts)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, mask_token=MASK)


def load_pretrained(path: str, vocab_size: int):
    """The tokenizer saved at `path`, with `<eos>` / `[MASK]` added when missing; it must fit
    `vocab_size`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data.tokenizer_path: no such file or folder {path!r}; give a folder saved by "
                        "save_pretrained or a tokenizer.json, or drop tokenizer_path to train a BPE")
    try:
        if p.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        else:
            tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - a malformed tokenizer is the user's to fix
        raise UserError(f"data.tokenizer_path: could not load a tokenizer from {path!r} "
                        f"({type(e).__name__}: {str(e).strip()[:200]}); give a transformers fast tokenizer") from e
    if not hasattr(tok, "backend_tokenizer"):
        raise UserError(f"data.tokenizer_path: {path!r} is a slow (Python) tokenizer; give a fast one "
                        "(a folder with tokenizer.json)")
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.mask_token is None:
        tok.add_special_tokens({"mask_token": MASK})
    if len(tok) > vocab_size:
        raise UserError(f"data.vocab_size {vocab_size} is smaller than the tokenizer ({len(tok)} entries); "
                        f"raise data.vocab_size to >= {len(tok)}")
    return tok


def pretrained_fingerprint(path: str) -> str:
    """sha256 of the files that define the tokenizer at `path` (cheap: no tokenizer is built)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data.tokenizer_path: no such file or folder {path!r}; give a folder saved by "
                        "save_pretrained or a tokenizer.json, or drop tokenizer_path to train a BPE")
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.name in _TOKENIZER_FILES)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def load_tokenizer(tokenizer_dir: Path):
    """The fast tokenizer saved (by prepare_data, or beside model weights) in `tokenizer_dir`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
