"""Output files and folders: the checks before any long work, and the one atomic write.

A report folder holds a marker file (``MARKER``); ``force=True`` replaces only a folder that has it (or an
empty one), never the working folder, one of its ancestors or a folder holding protected paths (the input
data). :func:`atomic_write` writes a file or folder under a temporary sibling and renames it into place
at the end, so a failure (or Ctrl-C) never leaves a half-written output.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


#: the file every report folder holds: ``force=True`` replaces only folders that have it (or empty ones)
MARKER = ".zoo-report"


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_output_dir(out: str | os.PathLike, force: bool = False, *, name: str = "out",
                     protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that a report folder can be written at ``out``, before any long work; return it as a Path.

    Refused, with a ``ValueError``/``FileExistsError`` naming ``name`` (the argument or CLI flag): the
    working folder or one of its ancestors; an existing path without ``force``; with ``force``, an
    existing path that is not a folder, is neither empty nor a report (no ``MARKER``), or holds one
    of the ``protect`` paths (e.g. the input data); a location under a file or in a folder that cannot
    be written. Missing parent folders are fine (created when the report is written).
    """
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise TypeError(f"{name}: expected a folder path, got {out!r}")
    out = Path(out)
    where = out.resolve()
    if _inside(Path.cwd().resolve(), where):
        raise ValueError(f"{name}: {str(out)!r} is the working folder or contains it; choose a new folder, "
                         "e.g. runs/NAME")
    if out.exists() or out.is_symlink():
        if not force:
            raise FileExistsError(f"{name}: {str(out)!r} already exists; pass --force (force=True) to replace "
                                  "a report folder, or choose another folder")
        if out.is_symlink() or not out.is_dir():
            raise FileExistsError(f"{name}: {str(out)!r} exists and is a link or a file, not a folder; it is never "
                                  "replaced")
        for p in protect:
            if p is not None and _inside(Path(p).resolve(), where):
                raise ValueError(f"{name}: {str(out)!r} holds the input {str(p)!r}; --force never replaces it, "
                                 "choose another folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise FileExistsError(f"{name}: {str(out)!r} is not a zoo report folder (no {MARKER} file) and not "
                                  "empty; --force replaces only report folders, choose another folder")
    _check_parent(out, name)
    return out


def check_output_file(path: str | os.PathLike, force: bool = False, *, name: str = "path",
                      protect: Iterable[str | os.PathLike] = (), is_ours=None, what: str = "a zoo file",
                      advice: str = "pass --force (force=True) to replace it") -> Path:
    """The same checks as :func:`check_output_dir` for one output file (e.g. a training checkpoint): an
    existing file is replaced only with ``force``, only if ``is_ours(path)`` accepts it (raises nothing),
    and never when it is or lies inside a ``protect`` path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise TypeError(f"{name}: expected a file path, got {path!r}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise FileExistsError(f"{name}: {str(path)!r} is a folder, expected a file")
        if not force:
            raise FileExistsError(f"{name}: {str(path)!r} already exists; {advice}")
        for p in protect:
            if _inside(path.resolve(), Path(p).resolve()):
                raise ValueError(f"{name}: {str(path)!r} is (inside) the input {str(p)!r}; it is never replaced")
        try:
            if is_ours is not None:
                is_ours(path)
        except Exception:
            raise FileExistsError(f"{name}: {str(path)!r} is not {what}; --force replaces only that, choose "
                                  "another file") from None
    _check_parent(path, name)
    return path


def _check_parent(path: Path, name: str) -> None:
    """The nearest existing folder above ``path`` must be a folder that can be written."""
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: {str(path)!r} lies under {str(parent)!r}, which is a file, not a folder")
    try:                         # a real write: os.access says yes to root on a read-only file system
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".zoo-probe-"))
    except OSError as e:
        raise PermissionError(f"{name}: cannot create {str(path)!r}: folder {str(parent)!r} is not writable "
                              f"({e.strerror})") from None


@contextmanager
def atomic_write(path: str | os.PathLike, *, folder: bool = False, force: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: yields a temporary sibling (a new empty folder with ``folder=True``, else a
    file name) to write into; on success it takes the place of ``path`` in one rename, on any failure it is
    removed and ``path`` is left as it was. A file replaces an existing one; a folder replaces an
    existing report folder only with ``force`` (checked again, :func:`check_output_dir`), and a folder
    another run created meanwhile is left as it is (``FileExistsError``). Missing parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    else:
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if folder:
            _move_into_place(tmp, path, force)
        else:
            os.replace(tmp, path)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out`` (replacing a report folder there only with ``force``), atomically."""
    taken = FileExistsError(f"out: {str(out)!r} was created by another run meanwhile; it was left as it is "
                            "and this report was not written")
    old = None
    if out.exists() or out.is_symlink():
        if not force:
            raise taken
        check_output_dir(out, force)      # still a report folder (it may have changed during the run)
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / "report")
    try:
        os.rename(tmp, out)               # atomic; fails on a non-empty folder created meanwhile
    except OSError as e:
        if old is not None and not out.exists():
            (old / "report").rename(out)
            shutil.rmtree(old, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise taken from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
