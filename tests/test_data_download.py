"""TAU22 download helper against a local HTTP server: one archive at a time, verified, unpacked
through a scratch folder with a done marker; range resume, a stalled connection, zip-slip, and
network, disk, checksum and archive errors as one-line messages."""
from __future__ import annotations

import time

import pytest

from benchmarks.faults import ArchiveServer, zip_of
from mobileast.data import download
from mobileast.files import file_md5


@pytest.fixture
def zenodo(monkeypatch):
    """The two archives of a tiny TAU22 layout, listed in ARCHIVES with their md5 sums."""
    server = ArchiveServer()
    archives = {"x.meta.zip": server.publish("x.meta.zip", zip_of({"TAU/meta.csv": b"filename\n"})),
                "x.audio.1.zip": server.publish("x.audio.1.zip", zip_of({"TAU/audio/a.wav": bytes(range(256)) * 64}))}
    monkeypatch.setattr(download, "ARCHIVES", archives)
    monkeypatch.setattr(download, "URL", server.url)
    yield server
    server.close()


def test_download_verifies_unpacks_and_finds_the_root(zenodo, tmp_path):
    dest = tmp_path / "data"
    root = download.download(dest, zenodo.url)
    assert root == dest / "TAU" and (root / "audio" / "a.wav").read_bytes() == bytes(range(256)) * 64
    assert (root / "meta.csv").read_text() == "filename\n" and not list(dest.glob("*.zip"))
    assert sorted(p.name for p in (dest / download.SCRATCH).iterdir()) == ["x.audio.1.zip.done", "x.meta.zip.done"]
    assert download.download(dest, zenodo.url, keep_archives=True) == root and len(zenodo.ranges) == 2  # all done


def test_keep_archives_keeps_the_verified_zips(zenodo, tmp_path):
    download.download(tmp_path / "data", zenodo.url, keep_archives=True)
    assert {p.name: file_md5(p) for p in (tmp_path / "data").glob("*.zip")} == download.ARCHIVES


def test_an_interrupted_download_resumes_the_partial_archive_and_skips_finished_ones(zenodo, tmp_path, capsys):
    dest = tmp_path / "data"
    zenodo.failing.add("x.audio.1.zip")
    assert download.main([str(dest)]) == 1
    err = capsys.readouterr().err
    assert err == f"download: x.audio.1.zip: HTTP 503 Service Unavailable from {zenodo.url.format(name='x.audio.1.zip')}\n"
    assert (dest / "TAU" / "meta.csv").is_file()  # the first archive is in place and marked done

    zenodo.failing.clear()
    audio = zenodo.files["x.audio.1.zip"]
    (dest / download.SCRATCH / "x.audio.1.zip.part").write_bytes(audio[:5000])  # a transfer broken at 5000 bytes
    zenodo.ranges.clear()
    assert download.main([str(dest)]) == 0
    assert zenodo.ranges == [("x.audio.1.zip", "bytes=5000-")]  # the meta archive is not fetched again
    assert (dest / "TAU" / "audio" / "a.wav").read_bytes() == bytes(range(256)) * 64


def test_a_complete_part_file_is_verified_without_fetching_it_again(zenodo, tmp_path):
    dest = tmp_path / "data"
    (dest / download.SCRATCH).mkdir(parents=True)
    (dest / download.SCRATCH / "x.meta.zip.part").write_bytes(zenodo.files["x.meta.zip"])
    download.download(dest, zenodo.url)
    assert ("x.meta.zip", f"bytes={len(zenodo.files['x.meta.zip'])}-") in zenodo.ranges  # answered 416
    assert (dest / "TAU" / "meta.csv").is_file()


def test_a_stalled_connection_times_out_with_one_line_and_keeps_the_part(zenodo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "ARCHIVES", {"stall.zip": "0" * 32})
    zenodo.stalled.add("stall.zip")
    start = time.monotonic()
    assert download.main([str(tmp_path / "data"), "--timeout", "0.3"]) == 1
    assert time.monotonic() - start < 3
    assert capsys.readouterr().err == (f"download: stall.zip: no data from {zenodo.url.format(name='stall.zip')} "
                                       "for 0.3 s; run again to resume\n")
    assert (tmp_path / "data" / download.SCRATCH / "stall.zip.part").read_bytes() == b"PK"


def test_wrong_checksum_is_one_line_and_deletes_the_download(zenodo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(download.ARCHIVES, "x.meta.zip", "0" * 32)
    assert download.main([str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("download: x.meta.zip: md5 ") and ", expected 0000" in err and err.count("\n") == 1
    assert not list((tmp_path / "data").rglob("*.zip*"))


def test_a_broken_zip_with_the_published_checksum_is_one_line(zenodo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "ARCHIVES", {"bad.zip": zenodo.publish("bad.zip", b"not a zip at all")})
    assert download.main([str(tmp_path / "data")]) == 1
    assert capsys.readouterr().err == "download: bad.zip: not a readable zip archive (File is not a zip file)\n"


def test_a_disk_error_is_one_line(zenodo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the destination's parent should be")
    assert download.main([str(blocker / "data")]) == 1
    assert capsys.readouterr().err == f"download: x.meta.zip: Not a directory: {blocker / 'data' / download.SCRATCH}\n"


def test_a_zip_slip_member_is_refused_and_nothing_leaves_the_destination(zenodo, tmp_path, monkeypatch, capsys):
    """`../evil` would land beside the destination: the whole archive is refused before any member is written."""
    evil = zip_of({"TAU/meta.csv": b"filename\n", "../evil": b"owned"})
    monkeypatch.setattr(download, "ARCHIVES", {"evil.zip": zenodo.publish("evil.zip", evil)})
    dest = tmp_path / "data"
    assert download.main([str(dest)]) == 1
    assert capsys.readouterr().err == f"download: evil.zip: member '../evil' would be written outside {dest}; the archive is refused\n"
    assert not list(tmp_path.rglob("evil")) and not (dest / "TAU").exists()
    assert not (dest / download.SCRATCH / "evil.zip.done").exists()


def test_an_unreachable_server_is_one_line(zenodo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "URL", "http://127.0.0.1:1/{name}")  # nothing listens on port 1
    assert download.main([str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("download: x.meta.zip: cannot reach http://127.0.0.1:1/x.meta.zip (") and err.count("\n") == 1


# ---------------------------------------------------------------- MicIRP impulse responses

def test_micirp_files_are_named_and_pinned():
    assert len(download.MICIRP_FILES) == 66 and all(name.endswith(".wav") for name in download.MICIRP_FILES)
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in download.MICIRP_FILES.values())
    assert "/2e20abaa64264f227c50696e5a43d4c706543ff4/" in download.MICIRP_URL  # a fixed commit: fixed bytes


@pytest.fixture
def micirp(monkeypatch):
    """Two impulse responses served locally, one with a name that must be URL-quoted."""
    server = ArchiveServer()
    files = {"B&O_BM2.wav": server.publish("B%26O_BM2.wav", b"RIFF" + bytes(range(200))),
             "Altec_639.wav": server.publish("Altec_639.wav", b"RIFF" + bytes(range(100, 250)))}
    monkeypatch.setattr(download, "MICIRP_FILES", files)
    monkeypatch.setattr(download, "MICIRP_URL", server.url)
    yield server
    server.close()


def test_micirp_download_verifies_each_file_and_leaves_only_them(micirp, tmp_path, capsys):
    dest = tmp_path / "irs"
    assert download.main(["--micirp", str(dest)]) == 0
    assert {p.name: file_md5(p) for p in dest.iterdir()} == download.MICIRP_FILES  # no scratch folder left
    assert f"augment.dir.ir_dir: {dest}" in capsys.readouterr().out
    micirp.ranges.clear()
    assert download.main(["--micirp", str(dest)]) == 0 and micirp.ranges == []  # verified files are kept


def test_micirp_resumes_a_broken_file_and_refetches_a_corrupt_one(micirp, tmp_path):
    dest = tmp_path / "irs"
    (dest / download.SCRATCH).mkdir(parents=True)
    (dest / download.SCRATCH / "Altec_639.wav.part").write_bytes(micirp.files["Altec_639.wav"][:50])
    (dest / "B&O_BM2.wav").write_bytes(b"corrupt")
    download.download_files(dest, download.MICIRP_FILES, micirp.url)
    assert micirp.ranges == [("B%26O_BM2.wav", None), ("Altec_639.wav", "bytes=50-")]
    assert {p.name: file_md5(p) for p in dest.iterdir()} == download.MICIRP_FILES


def test_micirp_errors_are_one_line_naming_the_file(micirp, tmp_path, monkeypatch, capsys):
    micirp.failing.add("Altec_639.wav")
    assert download.main(["--micirp", str(tmp_path / "irs")]) == 1
    assert capsys.readouterr().err == ("download: Altec_639.wav: HTTP 503 Service Unavailable from "
                                       f"{micirp.url.format(name='Altec_639.wav')}\n")
    monkeypatch.setitem(download.MICIRP_FILES, "Altec_639.wav", "0" * 32)
    micirp.failing.clear()
    assert download.main(["--micirp", str(tmp_path / "irs")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("download: Altec_639.wav: md5 ") and err.count("\n") == 1
    assert not (tmp_path / "irs" / "Altec_639.wav").exists()
