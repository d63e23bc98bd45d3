"""Text corpora for language-model stages: hub data sets, local files, or text that
every Python installation carries (for the offline demo and tests).

A corpus is split into train / validation / test by position (the first 80%,
the next 10%, the last 10% of its characters, cut at whitespace), so no
window of one split overlaps another; documented in docs/services.md.
"""

from __future__ import annotations

import ast
import codecs
import sys
from pathlib import Path

from clab.data.row_files import read_row_file
from clab.errors import ClabError

SPLITS = (("train", 0.0, 0.8), ("validation", 0.8, 0.9), ("test", 0.9, 1.0))
STDLIB = (
    "stdlib:prose",
    "stdlib:prose-rot13",
    "stdlib:code",
    "stdlib:docstrings",
)


def _stdlib_root() -> Path:
    return Path(ast.__file__).parent


def _stdlib_files(limit: int) -> list[Path]:
    files = sorted(p for p in _stdlib_root().glob("*.py") if p.stat().st_size < 200_000)
    return files[:limit]


def stdlib_text(kind: str, max_chars: int) -> str:
    """English prose (the documentation topics), the same prose in ROT13, Python
    source, or docstrings."""
    if kind in ("stdlib:prose", "stdlib:prose-rot13"):
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
        if kind == "stdlib:prose-rot13":
            # the same text under other tokens: a corpus that interferes with prose by
            # construction (a word-reversed prose kept the tokens, and nothing was forgotten)
            text = codecs.encode(text, "rot13")
    elif kind == "stdlib:code":
        text = "\n\n".join(p.read_text(errors="replace") for p in _stdlib_files(80))
    else:
        docs = []
        for p in _stdlib_files(400):
            try:
                tree = ast.parse(p.read_text(errors="replace"))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 80:
                        docs.append(doc)
        text = "\n\n".join(docs)
    return text[:max_chars]


def load_corpus(source: str, max_chars: int, field: str = "text") -> str:
    """``stdlib:...``, a local .txt / .parquet / .jsonl file, or a hub data set id."""
    if source in STDLIB:
        return stdlib_text(source, max_chars)
    if source.startswith("stdlib:"):
        raise ClabError(
            f"corpora: {source!r} is no standard-library corpus (known: {', '.join(STDLIB)})"
        )
    path = Path(source)
    if path.suffix and path.suffix not in (".txt", ".parquet", ".jsonl", ".json") and path.exists():
        raise ClabError(
            f"corpora: {path}: a local corpus is a .txt, .parquet, .jsonl or .json file "
            "(anything else is read as a hub data set id)"
        )
    if path.suffix == ".txt":
        if not path.is_file():
            raise ClabError(f"corpora: {path} does not exist")
        return path.read_text(errors="replace")[:max_chars]
    if path.suffix in (".parquet", ".jsonl", ".json"):  # clab's reader: it names a bad line
        if not path.is_file():
            raise ClabError(f"corpora: {path} does not exist")
        if path.suffix == ".parquet":  # the text column alone: a wide table stays on disk
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(path).names
                if field not in names:
                    raise ClabError(f"corpora: {path}: no {field!r} column ({names})")
                rows = pq.read_table(path, columns=[field]).column(field).to_pylist()
            except (OSError, ValueError) as e:  # pyarrow's errors are both
                raise ClabError(f"corpora: {path}: not readable as Parquet ({e})") from None
        else:  # a bare string is a row of text, as datasets reads it
            rows = read_row_file(path)
        texts = []
        for i, row in enumerate(rows):
            text = row.get(field) if isinstance(row, dict) else row  # a bare string: text
            if not isinstance(text, str):
                raise ClabError(f"corpora: {path}: row {i + 1} has no {field!r} column of text")
            texts.append(text)
        return _joined(texts, max_chars)
    try:
        from datasets import load_dataset

        name, _, config = source.partition(":")
        ds = load_dataset(name, config or None, split="train")
    except Exception as e:  # datasets raises many kinds; the user needs the source named
        raise ClabError(f"corpora: cannot load {source!r}: {str(e).splitlines()[0]}") from None
    if field not in ds.column_names:
        raise ClabError(f"corpora: {source!r} has no {field!r} column ({ds.column_names})")
    return _joined(ds[field], max_chars)


def _joined(texts, max_chars: int) -> str:
    """The texts one a line, up to ``max_chars``: a hub corpus is read no further."""
    out, n = [], 0
    for t in texts:
        out.append(t)
        n += len(t) + 1
        if n >= max_chars:
            break
    return "\n".join(out)[:max_chars]


def split_text(text: str) -> dict[str, str]:
    """Train / validation / test by position, cut at whitespace: no overlap."""
    cuts = [0]
    for _, _, end in SPLITS:
        i = int(len(text) * end)
        while 0 < i < len(text) and not text[i].isspace():
            i += 1
        cuts.append(max(i, cuts[-1]))
    return {name: text[cuts[k] : cuts[k + 1]] for k, (name, _, _) in enumerate(SPLITS)}


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
