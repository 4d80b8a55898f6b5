"""TAU22 download helper: checksums verified, verified archives not fetched again, root found."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

from mobileast.data import download


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Two small archives in a local 'Zenodo' directory, reachable through file:// URLs."""
    source = tmp_path / "zenodo"
    source.mkdir()
    archives = {}
    for name, member, text in (("x.meta.zip", "TAU/meta.csv", "filename\n"), ("x.audio.1.zip", "TAU/audio/a.wav", "RIFF")):
        with zipfile.ZipFile(source / name, "w") as archive:
            archive.writestr(member, text)
        archives[name] = hashlib.md5((source / name).read_bytes()).hexdigest()
    monkeypatch.setattr(download, "ARCHIVES", archives)
    return f"file://{source}/{{name}}", archives


def test_download_verifies_unpacks_and_finds_the_root(mirror, tmp_path):
    url, _ = mirror
    root = download.download(tmp_path / "data", url)
    assert root == tmp_path / "data" / "TAU" and (root / "audio" / "a.wav").read_text() == "RIFF"
    assert not list((tmp_path / "data").glob("*.zip"))


def test_wrong_checksum_fails_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    url, archives = mirror
    monkeypatch.setitem(archives, "x.meta.zip", "0" * 32)
    with pytest.raises(download.ChecksumError, match="x.meta.zip: md5 .*, expected 0000"):
        download.download(tmp_path / "data", url)
    assert not (tmp_path / "data" / "x.meta.zip").exists() and not list((tmp_path / "data").glob("*.part"))


def test_verified_archives_are_not_fetched_again(mirror, tmp_path, monkeypatch):
    url, _ = mirror
    download.download(tmp_path / "data", url, keep_archives=True)
    monkeypatch.setattr(download.urllib.request, "urlopen", pytest.fail)
    download.download(tmp_path / "data", url, keep_archives=True)
