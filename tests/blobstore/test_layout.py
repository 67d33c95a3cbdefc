"""Store keys: built and parsed in one place, malformed keys and run names refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore.blobstore.digest import is_digest, short
from castore.blobstore.layout import (
    MAX_EPOCH,
    STORE_CONFIG_KEY,
    blob_key,
    check_run_name,
    manifest_prefix,
    parse_blob_key,
    parse_part_name,
    part_key,
)
from castore.errors import InvalidCheckpointError

D = "3fa2c1" + "0123456789abcdef" * 3 + "0a1b2c3d4e"  # 64 lowercase hex characters

digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def test_fixed_keys():
    assert STORE_CONFIG_KEY == "castore.json"
    assert len(D) == 64
    assert blob_key(D) == f"blobs/3f/a2/{D}"
    assert manifest_prefix("ppo") == "runs/ppo/manifest"
    assert part_key("ppo", 40) == "runs/ppo/manifest/0000000040.parquet"
    assert part_key("ppo", 0) == "runs/ppo/manifest/0000000000.parquet"
    assert part_key("ppo", MAX_EPOCH) == "runs/ppo/manifest/9999999999.parquet"


@given(digests)
def test_blob_key_round_trips(digest):
    key = blob_key(digest)
    assert key.split("/") == ["blobs", digest[:2], digest[2:4], digest]
    assert parse_blob_key(key) == digest
    assert parse_blob_key(f"/{key}") == digest


@pytest.mark.parametrize(
    "bad", ["", D[:-1], D + "0", D.upper(), D[:-1] + "g", " " + D[1:], None, 42, b"00" * 32]
)
def test_blob_key_refuses_non_digests(bad):
    with pytest.raises(ValueError, match="not a digest"):
        blob_key(bad)
    assert not is_digest(bad)


@pytest.mark.parametrize(
    "key",
    [
        f"blobs/3f/a3/{D}",  # fan-out does not match the name
        f"blobs/3e/a2/{D}",
        f"blobs/3f/{D}",  # a level missing
        f"blobs/3f/a2/{D}.tmp-0123abcd",  # a temporary file
        f"blobs/3f/a2/{D.upper()}",
        f"blobs/3f/a2/{D[:-1]}",
        f"blob/3f/a2/{D}",
        f"runs/3f/a2/{D}",
        "blobs/3f/a2",
        "castore.json",
        "",
    ],
)
def test_parse_blob_key_rejects_malformed_keys(key):
    assert parse_blob_key(key) is None


def test_short():
    assert short(D) == "3fa2c1012345"


@pytest.mark.parametrize(
    "name", ["ppo", "a", "A-1", "run_7", "seed=3", "lr+wd", "v1.2", "0", "x" * 128, "a.b.c"]
)
def test_good_run_names(name):
    assert check_run_name(name) == name
    assert manifest_prefix(name) == f"runs/{name}/manifest"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        ".",
        "a..b",
        "a/b",
        "/a",
        "a\\b",
        "has space",
        " lead",
        "trail ",
        "tab\tname",
        "new\nline",
        "x" * 129,
        "-dash-first",
        "_under",
        ".hidden",
        "naïve",
        "a*b",
        "a?b",
        "a:b",
    ],
)
def test_bad_run_names(name):
    with pytest.raises(InvalidCheckpointError, match=r"^invalid run name ") as info:
        check_run_name(name)
    assert repr(name) in str(info.value)
    with pytest.raises(InvalidCheckpointError):
        part_key(name, 0)


@pytest.mark.parametrize("name", [None, 7, b"ppo", ["ppo"]])
def test_run_name_must_be_str(name):
    with pytest.raises(InvalidCheckpointError, match="run name must be a str, got "):
        check_run_name(name)


@pytest.mark.parametrize("epoch", [-1, MAX_EPOCH + 1, 10**12])
def test_part_key_refuses_out_of_range_epochs(epoch):
    with pytest.raises(ValueError, match=f"epoch out of range: {epoch}"):
        part_key("ppo", epoch)


@given(st.integers(0, MAX_EPOCH))
def test_part_name_round_trips(epoch):
    key = part_key("ppo", epoch)
    assert parse_part_name(key) == epoch
    assert parse_part_name(key.rsplit("/", 1)[-1]) == epoch


@pytest.mark.parametrize(
    "name",
    [
        "40.parquet",
        "00000000040.parquet",
        "0000000040.parquet.tmp-abc",
        "0000000040.parq",
        "000000004a.parquet",
        "notes.txt",
        "",
        "runs/ppo/manifest/",
    ],
)
def test_parse_part_name_ignores_foreign_files(name):
    assert parse_part_name(name) is None
