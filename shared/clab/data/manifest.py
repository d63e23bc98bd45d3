"""A data set's ``manifest.json``: what makes a folder a clab data set, and its hashes.

The manifest is the only thing that lets a generator tell its own earlier
output (safe to replace) from a user's folder that happens to sit at
``output`` (never to be deleted), and lets a reader tell a data set that was
written whole from one damaged since.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from clab.errors import ClabError
from clab.storage.atomic import check_writable, clean_stale_partials, sha256_file

MANIFEST = "manifest.json"
DATASET_KINDS = ("countdown", "countdown-random-split")

# (resolved path, size, mtime_ns) -> sha256: each file is hashed once per process
# unless it changes; trainers and the evaluator check the same files repeatedly.
_HASHES: dict[tuple[str, int, int], str] = {}


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if it is a clab data set's, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") not in DATASET_KINDS:
        return None
    return manifest if isinstance(manifest.get("files"), dict) else None


def dataset_digest(folder: Path) -> str | None:
    """One hash of every file a data set holds (from its manifest), or None where the
    folder is no clab data set. A run records it when it starts, so that a data set
    regenerated under it (another seed, other ranges) is caught before the run trains
    its later stages, or the evaluator scores it, on problems its earlier stages
    never saw."""
    manifest = read_manifest(folder)
    return None if manifest is None else _files_digest(manifest["files"])


def _files_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def say_if_replaced(output: Path, before: dict | None, spec: dict) -> None:
    """One line when the data set just written at ``output`` has other files than the
    one it replaced (``before``: that one's manifest): the runs that trained on the old
    one will refuse to resume, and the evaluator to score them, as their run.json holds
    its hash. The same settings give the same files, so this names the settings that
    changed, or says that none did (another clab or pyarrow version writes other bytes)."""
    if before is None or not isinstance(before.get("files"), dict):
        return
    if _files_digest(before["files"]) == dataset_digest(output):
        return
    old = before.get("spec") if isinstance(before.get("spec"), dict) else {}
    same_bytes = {"workers", "output"}  # the same seed gives the same rows on any workers
    keys = sorted((old.keys() | spec.keys()) - same_bytes)
    diff = [k for k in keys if old.get(k) != spec.get(k)]
    why = f"made with other {', '.join(diff)}" if diff else "same settings, other files"
    print(
        f"clab: replaced the data set at {output} ({why}); runs that trained on the old one "
        "will refuse to resume, and the evaluator to score them, until it is made again "
        "as it was",
        flush=True,
    )


def prepare_output(output: Path, field: str = "output") -> None:
    """Check, before any work, that a generator may write its data set at ``output``.

    Only an earlier clab data set is replaced; any other file or folder there
    is the user's, so the run stops naming it and leaves it as it is. Staging
    folders of generators that were killed are removed.
    """
    exists = output.is_symlink() or output.exists()
    if exists and not (output.is_dir() and read_manifest(output) is not None):
        what = "folder" if output.is_dir() else "file"
        raise ClabError(
            f"{field}: {output} is an existing {what} that is not a clab data set (no "
            f"clab {MANIFEST} in it); it is left untouched: choose another {field} or move "
            "it away"
        )
    check_writable(output, field)
    clean_stale_partials(output.parent)


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def verify_files(data_dir: Path, rels: list[str]) -> None:
    """Raise naming the first file that is not as the manifest recorded it."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise ClabError(
            f"data.dir: {data_dir / MANIFEST} is missing or not a clab data-set manifest: "
            "regenerate the data set"
        )
    for rel in rels:
        entry = manifest["files"].get(rel)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ClabError(f"{data_dir / MANIFEST}: no hash recorded for {rel}")
        path = data_dir / rel
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise ClabError(f"{path}: cannot be read ({os.strerror(e.errno or 0)})") from None
        if digest != entry["sha256"]:
            raise ClabError(
                f"{path}: its sha256 does not match the hash in {data_dir / MANIFEST}: the file "
                "changed or is damaged since it was generated; regenerate the data set"
            )
