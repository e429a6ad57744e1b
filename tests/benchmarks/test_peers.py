"""The img2dataset peer runner: against posters on a loopback server, when its env is there."""

from __future__ import annotations

import functools
import http.server
import io
import pathlib
import threading

import pytest
from PIL import Image

from benchmarks import peers

POSTERS = 20


@pytest.fixture
def peer_env() -> None:
    """Skips the test when .venv-bench (or $POSTERS_BENCH_PYTHON) cannot run img2dataset."""
    reason = peers.peer_available()
    if reason is not None:
        pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def poster_urls(tmp_path: pathlib.Path):
    """URLs of small JPEG posters served from 127.0.0.1 by a server thread."""
    root = tmp_path / "web"
    root.mkdir()
    for i in range(POSTERS):
        image = Image.new("RGB", (182, 268), ((i * 37) % 256, (i * 91) % 256, 120))
        image.paste((255 - (i * 37) % 256, 40, 200), (20 + i, 30, 120, 60 + 5 * i))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        (root / f"poster_{i:03d}.jpg").write_bytes(buffer.getvalue())
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield [f"http://127.0.0.1:{port}/poster_{i:03d}.jpg" for i in range(POSTERS)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_peer_available_names_the_make_target_when_python_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(peers.PYTHON_ENV, str(tmp_path / "missing" / "bin" / "python"))
    reason = peers.peer_available()
    assert reason is not None
    assert "make bench-peers" in reason


def test_img2dataset_downloads_every_poster(peer_env, poster_urls, tmp_path):
    run = peers.run_img2dataset(poster_urls, str(tmp_path / "peer"), processes=1, threads=4)
    assert run.successes == POSTERS
    assert run.failures == 0
    assert run.wall_s > 0
    assert list(pathlib.Path(run.output_dir).glob("*.tar"))


def _stored_jpegs(output_dir: str) -> list[bytes]:
    import tarfile

    found = []
    for path in sorted(pathlib.Path(output_dir).glob("*.tar")):
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
            found += [tar.extractfile(m).read() for m in members]
    return found


def test_the_same_work_setting_keeps_fitting_jpegs_and_never_pads(peer_env, poster_urls, tmp_path):
    """As the project stores posters: a JPEG that fits is kept as fetched; a larger one gets its
    longer side cut to the limit, aspect ratio kept, nothing padded."""
    served = sorted(p.read_bytes() for p in (tmp_path / "web").glob("*.jpg"))
    kept = peers.run_img2dataset(poster_urls, str(tmp_path / "fits"), processes=1, threads=4,
                                 image_size=768, same_work=True)  # fmt: skip
    assert sorted(_stored_jpegs(kept.output_dir)) == served
    cut = peers.run_img2dataset(poster_urls, str(tmp_path / "cut"), processes=1, threads=4,
                                image_size=200, same_work=True)  # fmt: skip
    sizes = {Image.open(io.BytesIO(data)).size for data in _stored_jpegs(cut.output_dir)}
    assert sizes == {(136, 200)}
    padded = peers.run_img2dataset(poster_urls, str(tmp_path / "border"), processes=1, threads=4,
                                   image_size=200)  # fmt: skip
    sizes = {Image.open(io.BytesIO(d)).size for d in _stored_jpegs(padded.output_dir)}
    assert sizes == {(200, 200)}
