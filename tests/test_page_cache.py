"""Warming a local table's files: read once in the background when they fit, never for remote
objects or when they would not fit in the memory available."""

from __future__ import annotations

from unittest import mock

from featureplane.lake import page_cache


def test_local_files_that_fit_are_read_once_in_the_background(tmp_path):
    files = []
    for n in range(3):
        path = tmp_path / f"part-{n}.parquet"
        path.write_bytes(bytes(range(256)) * (1000 + n))
        files.append(str(path))
    read: list[str] = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        read.append(str(path))
        return real_open(path, *args, **kwargs)

    with mock.patch("builtins.open", counting_open):
        thread = page_cache.warm([files[0], f"file://{files[1]}", files[2], "s3://bucket/remote.parquet"])
        assert thread is not None
        thread.join(10)
    assert read == files  # in order, the remote object left alone


def test_nothing_is_warmed_when_it_would_not_fit_or_nothing_is_local(tmp_path):
    path = tmp_path / "part.parquet"
    path.write_bytes(b"x" * 4096)
    with mock.patch.object(page_cache, "available_bytes", return_value=4096 * 3):  # a quarter is too little
        assert page_cache.warm([str(path)]) is None
    with mock.patch.object(page_cache, "available_bytes", return_value=None):
        assert page_cache.warm([str(path)]) is None
    assert page_cache.warm(["s3://bucket/part.parquet"]) is None
    assert page_cache.warm([str(tmp_path / "gone.parquet")]) is None
