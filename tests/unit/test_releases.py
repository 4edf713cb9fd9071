import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from bloom_agent.config.apps import load_app
from bloom_agent.store import releases
from bloom_agent.store import versions


@pytest.fixture
def app(tmp_path):
    f = tmp_path / "web.toml"
    f.write_text(f'listen = ["127.0.0.1:8080"]\nexec = "bin/server --port 1"\nreleases_dir = "{tmp_path}/releases"\n'
                 f"min_free_bytes = 0\nmax_release_bytes = 100000\n")
    return load_app(f)


def install(app, *args, **kwargs) -> releases.Installed:
    """An install as the agent makes it: unpacked, then (once recorded) put in place."""
    done = releases.install(app, *args, **kwargs)
    releases.place(done)
    return done


def make_tar(path: Path, members, mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data, kind, fmode, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, fmode, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


GOOD = [("bin", b"", tarfile.DIRTYPE, 0o755, ""), ("bin/server", b"#!/bin/sh\n", tarfile.REGTYPE, 0o755, ""),
        ("static/a.txt", b"hello", tarfile.REGTYPE, 0o644, ""),
        ("static/b.txt", b"", tarfile.SYMTYPE, 0o777, "a.txt"),
        ("current", b"", tarfile.SYMTYPE, 0o777, "static")]


@pytest.mark.parametrize("mode", ["w:gz", "w:xz"])
def test_install_good_release(app, tmp_path, mode):
    tarball = make_tar(tmp_path / "web-1.0.0.tar.gz", GOOD, mode)
    done = install(app, tarball, "1.0.0", None)
    assert done.path == app.releases_dir / "1.0.0"
    assert (done.path / "bin" / "server").read_bytes() == b"#!/bin/sh\n"
    assert os.access(done.path / "bin" / "server", os.X_OK)
    assert os.readlink(done.path / "static" / "b.txt") == "a.txt"
    assert done.sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert done.size == len(b"#!/bin/sh\n") + 5
    assert [p.name for p in app.releases_dir.iterdir()] == ["1.0.0"]


def test_install_zstd(app, tmp_path):
    import zstandard  # a dependency of the package (python3-zstandard), so never skipped
    plain = make_tar(tmp_path / "plain.tar", GOOD, "w")
    tarball = tmp_path / "web-1.0.0.tar.zst"
    tarball.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert install(app, tarball, "1.0.0", None).path.is_dir()


def test_build_metadata_version_gets_an_instance_name(app, tmp_path):
    done = install(app, make_tar(tmp_path / "x.tar.gz", GOOD), "1.0.0+build.7", None)
    assert done.instance == "1.0.0_build.7" and done.path.name == "1.0.0_build.7"


@pytest.mark.parametrize("members, message", [
    ([("../x", b"x", tarfile.REGTYPE, 0o644, "")], "contains '..'"),
    ([("/etc/x", b"x", tarfile.REGTYPE, 0o644, "")], "absolute path"),
    ([("l", b"", tarfile.SYMTYPE, 0o777, "/etc/passwd")], "points to an absolute path"),
    ([("a/l", b"", tarfile.SYMTYPE, 0o777, "../../x")], "points outside the release"),
    ([("h", b"", tarfile.LNKTYPE, 0o644, "../outside")], "points outside the release"),
    ([("s", b"x", tarfile.REGTYPE, 0o4755, "")], "setuid or setgid"),
    ([("g", b"x", tarfile.REGTYPE, 0o2755, "")], "setuid or setgid"),
    ([("d", b"", tarfile.CHRTYPE, 0o644, "")], "special file"),
    ([("f", b"", tarfile.FIFOTYPE, 0o644, "")], "special file"),
    ([("big", b"x" * 100001, tarfile.REGTYPE, 0o644, "")], "larger than max_release_bytes"),
    ([("bin/other", b"x", tarfile.REGTYPE, 0o755, "")], "the release has no 'bin/server'"),
    ([("bin/server", b"x", tarfile.REGTYPE, 0o644, "")], "is not an executable file"),
    ([("bin/server", b"", tarfile.SYMTYPE, 0o777, "../../../bin/sh")], "points outside the release"),
    # A chain of links, each harmless on its own, must not lead a later member out of the release.
    ([("a", b"", tarfile.SYMTYPE, 0o777, "."), ("a/a/c", b"", tarfile.SYMTYPE, 0o777, "../.."),
      ("c/escaped", b"x", tarfile.REGTYPE, 0o644, "")], "is written through the link 'a'"),
    ([("d", b"", tarfile.SYMTYPE, 0o777, "sub"), ("sub", b"", tarfile.DIRTYPE, 0o755, ""),
      ("d/f", b"x", tarfile.REGTYPE, 0o644, "")], "is written through the link 'd'"),
    ([("l", b"", tarfile.SYMTYPE, 0o777, "x"), ("l", b"", tarfile.DIRTYPE, 0o755, "")], "is written through the link 'l'"),
    ([("f", b"x", tarfile.REGTYPE, 0o644, ""), ("l", b"", tarfile.SYMTYPE, 0o777, "f"),
      ("h", b"", tarfile.LNKTYPE, 0o644, "l")], "is written through the link 'l'"),
])
def test_unsafe_or_incomplete_archives_leave_nothing(app, tmp_path, members, message):
    tarball = make_tar(tmp_path / "t.tar.gz", members)
    with pytest.raises(releases.InstallError, match=message):
        install(app, tarball, "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []


def test_not_an_archive(app, tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(4000))
    with pytest.raises(releases.InstallError, match="is not a gzip, xz or zstd compressed tar archive"):
        install(app, junk, "1.0.0", None)


def test_truncated_archive(app, tmp_path):
    good = make_tar(tmp_path / "g.tar.gz", GOOD + [("blob", os.urandom(50000), tarfile.REGTYPE, 0o644, "")])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(releases.InstallError, match="not a readable tar archive"):
        install(app, cut, "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []


def test_checksum_sources():
    """The agent takes the checksum the caller sends (bloomctl reads any sidecar file, as the caller)."""
    assert releases.expected_checksum("web-1.0.0.tar.gz", None, required=False) is None
    with pytest.raises(releases.InstallError, match="no checksum for web-1.0.0.tar.gz: this app requires one"):
        releases.expected_checksum("web-1.0.0.tar.gz", None, required=True)
    assert releases.expected_checksum("web-1.0.0.tar.gz", "B" * 64, required=True) == "b" * 64
    with pytest.raises(releases.InstallError, match="not a SHA-256"):
        releases.expected_checksum("web-1.0.0.tar.gz", "abc", required=False)


def test_checksum_mismatch_refused(app, tmp_path):
    tarball = make_tar(tmp_path / "t.tar.gz", GOOD)
    with pytest.raises(releases.InstallError, match="checksum mismatch"):
        install(app, tarball, "1.0.0", "0" * 64)
    assert list(app.releases_dir.iterdir()) == []


def test_already_installed(app, tmp_path):
    tarball = make_tar(tmp_path / "t.tar.gz", GOOD)
    install(app, tarball, "1.0.0", None)
    with pytest.raises(releases.InstallError, match="already installed"):
        install(app, tarball, "1.0.0", None)


def test_free_space_floor(tmp_path):
    f = tmp_path / "web.toml"
    f.write_text(f'listen = ["127.0.0.1:8080"]\nexec = "bin/server"\nreleases_dir = "{tmp_path}/r"\n'
                 f"min_free_bytes = {2**62}\n")
    with pytest.raises(releases.InstallError, match="not enough free space"):
        install(load_app(f), make_tar(tmp_path / "t.tar.gz", GOOD), "1.0.0", None)


@pytest.mark.parametrize("name, version", [("web-1.2.3.tar.gz", "1.2.3"), ("web-1.2.3-rc.1.tgz", "1.2.3-rc.1"),
                                           ("web-2.0.0+b7.tar.zst", "2.0.0+b7"), ("web-api-1.0.0.tar.xz", None),
                                           ("web-20261201-1530.tar.gz", "20261201-1530"),
                                           ("web-3f2a9c1.tar.gz", "3f2a9c1"), ("web-ab12cd3.tar.gz", None),
                                           ("web-1.0.0.zip", None), ("web.tar.gz", None)])
def test_version_from_file_name(name, version):
    if version is None:
        with pytest.raises(versions.InvalidVersion, match="cannot tell the version"):
            releases.version_from_name("web", name)
    else:
        assert releases.version_from_name("web", name) == version


def test_staging_leftovers_are_removed(app):
    app.releases_dir.mkdir(parents=True)
    (app.releases_dir / ".install-1.0.0-123").mkdir()
    (app.releases_dir / "0.9.0").mkdir()
    releases.remove_staging_leftovers(app)
    assert [p.name for p in app.releases_dir.iterdir()] == ["0.9.0"]


PREFIXED = [("web-1.4.0", b"", tarfile.DIRTYPE, 0o755, ""), ("web-1.4.0/bin/server", b"#!/bin/sh\n", tarfile.REGTYPE, 0o755, ""),
            ("web-1.4.0/static/a.txt", b"hello", tarfile.REGTYPE, 0o644, ""),
            ("web-1.4.0/static/b.txt", b"", tarfile.LNKTYPE, 0o644, "web-1.4.0/static/a.txt")]


def _with_exec(app, exec_line):
    return app.__class__(**{**app.__dict__, "exec": exec_line})


@pytest.mark.parametrize("exec_line", ["bin/server", "/usr/bin/python3 -m web"])
def test_one_top_level_directory_named_for_the_version_is_refused(app, tmp_path, exec_line):
    tarball = make_tar(tmp_path / "web-1.4.0.tar.gz", PREFIXED)
    with pytest.raises(releases.InstallError) as info:
        install(_with_exec(app, exec_line), tarball, "1.4.0", None)
    assert "everything in the tarball is under one directory, 'web-1.4.0/'" in str(info.value)
    assert "tar -czf web-1.4.0.tar.gz -C web-1.4.0 ." in info.value.hint and "--strip-components 1" in info.value.hint
    assert list(app.releases_dir.iterdir()) == []


def test_strip_components_installs_a_prefixed_tarball(app, tmp_path):
    done = install(app, make_tar(tmp_path / "web-1.4.0.tar.gz", PREFIXED), "1.4.0", None, strip=1)
    assert (done.path / "bin" / "server").read_bytes() == b"#!/bin/sh\n"
    assert (done.path / "static" / "b.txt").read_bytes() == b"hello" and not done.warning


def test_one_directory_is_fine_when_exec_goes_through_it_and_a_warning_otherwise(app, tmp_path):
    package = [("pkg", b"", tarfile.DIRTYPE, 0o755, ""), ("pkg/server", b"#!/bin/sh\n", tarfile.REGTYPE, 0o755, "")]
    done = install(_with_exec(app, "pkg/server"), make_tar(tmp_path / "a.tar.gz", package), "1.0.0", None)
    assert done.warning == ""
    done = install(_with_exec(app, "/usr/bin/python3 -m pkg"), make_tar(tmp_path / "b.tar.gz", package),
                            "1.0.1", None)
    assert done.warning.startswith("everything in the tarball is under one directory, 'pkg/'; the app starts in the "
                                   "directory above it")


def test_group_and_world_write_bits_are_masked(app, tmp_path):
    members = [("bin", b"", tarfile.DIRTYPE, 0o777, ""), ("bin/server", b"#!/bin/sh\n", tarfile.REGTYPE, 0o777, ""),
               ("data.txt", b"x", tarfile.REGTYPE, 0o666, "")]
    done = install(app, make_tar(tmp_path / "w.tar.gz", members), "1.0.0", None)
    assert {p.name: p.stat().st_mode & 0o777 for p in [done.path / "bin", done.path / "bin/server",
                                                        done.path / "data.txt"]} == {
        "bin": 0o755, "server": 0o755, "data.txt": 0o644}


def test_a_nul_byte_in_a_pax_name_is_refused_clearly(app, tmp_path):
    path = tmp_path / "nul.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin/server")
        info.pax_headers = {"path": "bin/ser\0ver"}
        info.mode, info.size = 0o755, 3
        tar.addfile(info, io.BytesIO(b"#!x"))
    with pytest.raises(releases.InstallError, match=r"has a NUL byte in its name"):
        install(app, path, "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []


def test_pythons_data_filter_is_asked_too_where_there_is_one(app, tmp_path, monkeypatch):
    seen = []

    def strict(member, dest):
        seen.append(member.name)
        if member.name == "static/a.txt":
            raise tarfile.TarError("not for you")
        return member

    monkeypatch.setattr(releases, "DATA_FILTER", strict)
    with pytest.raises(releases.InstallError, match="'static/a.txt' refused by Python's tar data filter: not for you"):
        install(app, make_tar(tmp_path / "f.tar.gz", GOOD), "1.0.0", None)
    assert seen[:3] == ["bin", "bin/server", "static/a.txt"]
    assert list(app.releases_dir.iterdir()) == []


def test_an_extended_header_too_large_to_read_is_refused_before_it_is_read(app, tmp_path):
    import gzip

    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin/server")
        info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
        info.mode, info.size = 0o755, 3
        tar.addfile(info, io.BytesIO(b"#!x"))
    assert path.stat().st_size < 20000  # a few KB of gzip: what made the agent read gigabytes
    with pytest.raises(releases.InstallError, match=r"extended header of \d+ bytes \(more than 1048576\)"):
        install(app, path, "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []
    assert gzip.decompress(path.read_bytes())  # a valid archive, refused for what it holds


def test_a_decompression_bomb_is_refused_by_its_expansion_and_a_small_release_that_compresses_well_is_not(
        app, tmp_path, monkeypatch):
    monkeypatch.setattr(releases, "EXPANSION_FLOOR_BYTES", 32 * 1024)
    zeros = b"\0" * (96 * 1024)  # under max_release_bytes; gzip makes a few hundred bytes of it
    bomb = make_tar(tmp_path / "bomb.tar.gz", GOOD + [("static/zeros", zeros, tarfile.REGTYPE, 0o644, "")])
    assert bomb.stat().st_size * releases.MAX_EXPANSION < len(zeros)
    with pytest.raises(releases.InstallError, match=r"unpacks to more than 200 times its own size .*decompression bomb"):
        install(app, bomb, "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []
    small = make_tar(tmp_path / "small.tar.gz", GOOD + [("static/zeros", zeros[:16 * 1024], tarfile.REGTYPE, 0o644, "")])
    install(app, small, "1.0.1", None)  # below the floor: compresses as well, and is no danger


def test_an_archive_with_too_many_members_is_refused(app, tmp_path, monkeypatch):
    monkeypatch.setattr(releases, "MAX_MEMBERS", 10)
    members = GOOD + [(f"static/{i}.txt", b"", tarfile.REGTYPE, 0o644, "") for i in range(10)]
    with pytest.raises(releases.InstallError, match="has more than 10 members"):
        install(app, make_tar(tmp_path / "many.tar.gz", members), "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []


def test_free_space_is_checked_again_as_the_unpacking_goes(app, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(releases, "SPACE_CHECK_BYTES", 4)
    real = shutil.disk_usage
    calls = []

    def shrinking(path):
        calls.append(path)
        usage = real(path)
        # roomy for the check before the unpack, then the disk fills up
        return usage._replace(free=0) if len(calls) > 1 else usage

    monkeypatch.setattr(releases.shutil, "disk_usage", shrinking)
    small = app.__class__(**{**app.__dict__, "min_free_bytes": 1})
    with pytest.raises(releases.InstallError, match="down to 0 bytes free while unpacking"):
        install(small, make_tar(tmp_path / "w.tar.gz", GOOD), "1.0.0", None)
    assert list(app.releases_dir.iterdir()) == []
