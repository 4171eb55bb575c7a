"""Unpack a model.tar.gz without trusting it.

Model archives come from users and buckets. An entry named ``../x`` or ``/etc/x``, a symlink or
hard link pointing outside, a device file, or an archive that inflates past a size limit must not
touch anything outside the target folder.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

DEFAULT_MAX_UNPACKED_BYTES = 64 * 1024**3


class UnsafeArchiveError(Exception):
    """The archive tries to write outside its folder, holds links or devices, or is too big."""


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise UnsafeArchiveError(f"archive entry {name!r} has an absolute path")
    resolved = (target / name).resolve()
    if resolved != target and target not in resolved.parents:
        raise UnsafeArchiveError(f"archive entry {name!r} points outside the model folder")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive entry {name!r} is a link; links are not allowed in model archives")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive entry {name!r} is not a regular file or folder")


def unpack_model_archive(
    archive: str | os.PathLike, target: str | os.PathLike, max_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> Path:
    """Check every entry first, then extract; raises UnsafeArchiveError and writes nothing if any is bad."""
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _check_member(member, target)
                total += max(member.size, 0)
                if total > max_bytes:
                    raise UnsafeArchiveError(
                        f"archive unpacks to more than {max_bytes} bytes (limit); refusing to unpack"
                    )
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as exc:
        raise UnsafeArchiveError(f"not a readable tar archive: {exc}") from exc
    return target
