"""The per-boot record of verified blob files: what it trusts, what it forgets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from castore.blobstore import verified
from castore.blobstore.verified import FileIdentity, VerifiedFiles, identity_of

DIGEST = "ab" * 32
OTHER = "cd" * 32
IDENTITY = FileIdentity(device=1, inode=2, size=3, mtime_ns=4, ctime_ns=5)


def test_a_recorded_identity_is_trusted_for_its_digest_only(tmp_path):
    files = VerifiedFiles(str(tmp_path / "verified" / "boot"))
    assert not files.trusts(DIGEST, IDENTITY)
    files.record(DIGEST, IDENTITY)
    assert files.trusts(DIGEST, IDENTITY)
    assert not files.trusts(OTHER, IDENTITY)


@pytest.mark.parametrize("field", FileIdentity._fields)
def test_any_change_of_identity_is_not_trusted(tmp_path, field):
    files = VerifiedFiles(str(tmp_path / "verified" / "boot"))
    files.record(DIGEST, IDENTITY)
    changed = IDENTITY._replace(**{field: getattr(IDENTITY, field) + 1})
    assert not files.trusts(DIGEST, changed)


def test_records_reach_another_process_through_the_file(tmp_path):
    path = str(tmp_path / "verified" / "boot")
    VerifiedFiles(path).record(DIGEST, IDENTITY)
    second = IDENTITY._replace(inode=9)
    VerifiedFiles(path).record(OTHER, second)
    assert os.path.getsize(path) == 2 * 72
    reader = VerifiedFiles(path)
    assert reader.trusts(DIGEST, IDENTITY)
    assert reader.trusts(OTHER, second)


def test_a_record_cut_short_is_read_once_it_is_whole(tmp_path):
    path = str(tmp_path / "verified" / "boot")
    VerifiedFiles(path).record(DIGEST, IDENTITY)
    whole = Path(path).read_bytes()
    with open(path, "wb") as f:
        f.write(whole[:40])
    reader = VerifiedFiles(path)
    assert not reader.trusts(DIGEST, IDENTITY)
    with open(path, "ab") as f:
        f.write(whole[40:])
    assert reader.trusts(DIGEST, IDENTITY)


def test_the_first_record_of_a_boot_removes_earlier_boots(tmp_path):
    folder = tmp_path / "verified"
    folder.mkdir()
    (folder / "earlier-boot").write_bytes(b"x" * 72)
    VerifiedFiles(str(folder / "this-boot")).record(DIGEST, IDENTITY)
    assert sorted(os.listdir(folder)) == ["this-boot"]


def test_an_unwritable_record_still_trusts_in_memory(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    files = VerifiedFiles(str(blocker / "boot"))
    files.record(DIGEST, IDENTITY)
    assert files.trusts(DIGEST, IDENTITY)
    assert not VerifiedFiles(str(blocker / "boot")).trusts(DIGEST, IDENTITY)


def test_a_file_changed_within_the_racy_window_has_no_identity(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    path.write_bytes(b"frame")
    stat = os.stat(path)
    monkeypatch.setattr(time, "time_ns", lambda: stat.st_ctime_ns + verified.RACY_NS - 1)
    assert identity_of(stat) is None
    monkeypatch.setattr(time, "time_ns", lambda: stat.st_ctime_ns + verified.RACY_NS)
    assert identity_of(stat) == FileIdentity(
        stat.st_dev, stat.st_ino, 5, stat.st_mtime_ns, stat.st_ctime_ns
    )


def test_without_a_boot_id_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(verified, "boot_id", lambda: None)
    assert VerifiedFiles.this_boot(str(tmp_path)) is None
    monkeypatch.setattr(verified, "boot_id", lambda: "b00t")
    files = VerifiedFiles.this_boot(str(tmp_path))
    assert files is not None
    assert files.path == str(tmp_path / "verified" / "b00t")
