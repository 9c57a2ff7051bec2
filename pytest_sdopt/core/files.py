"""Safe file names and atomic writes: the one place sdopt turns text into a path component and
writes a file that a reader may open at any moment (baselines, results JSON, reports).

`safe_name` keeps letters, digits and `._+=-` (plus what the caller allows: a test id keeps its
brackets and commas), replaces anything else with `_`, and cuts a name longer than `MAX_NAME`
to a prefix plus a digest of the whole text, so two long parametrize ids that share their first
150 characters never share a folder. `atomic_write` writes a temporary file in the same folder,
flushes it to disk, and renames it over the target: a reader sees the old file or the new one,
never half of one; on failure the temporary file is removed. The file gets the mode any new
file of this process gets (the umask's), not the temporary file's 0600.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Callable

MAX_NAME = 150  # characters of one path component (file systems allow 255 bytes)
DIGEST = 12  # hex characters of the digest a cut name ends with


def safe_name(text: str, allowed: str = "", max_length: int = MAX_NAME) -> str:
    """`text` as one portable path component; `allowed`: characters kept besides `A-Za-z0-9._+=-`."""
    name = re.sub(r"[^A-Za-z0-9._+=%s-]" % re.escape(allowed), "_", text)
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST]
    return f"{name[:max_length - DIGEST - 1]}-{digest}"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` through a temporary file in its folder (`write` gets the binary handle)."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
