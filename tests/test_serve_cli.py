"""``iste serve`` refuses bad input with one line and exit code 2, before serving anything."""

import socket

import pytest

from iste.cli.main import main
from slide_data import pyramid_tiff


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    return pyramid_tiff(tmp_path_factory)


def run(capsys, *argv):
    code = main(["serve", *map(str, argv)])
    err = capsys.readouterr().err
    return code, err


def test_a_missing_slide_is_an_error(capsys, tmp_path):
    code, err = run(capsys, tmp_path / "nope.svs", "--port", 0)
    assert code == 2 and err.startswith("iste: error:") and "no such slide" in err


def test_a_folder_without_slides_is_an_error(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, err = run(capsys, tmp_path, "--port", 0)
    assert code == 2 and "no slides" in err


def test_a_file_that_is_not_a_slide_is_an_error(capsys, tmp_path):
    bad = tmp_path / "fake.svs"
    bad.write_bytes(b"not a slide at all")
    with pytest.warns(UserWarning, match="skipping fake.svs"):
        code, err = run(capsys, bad, "--port", 0)
    assert code == 2 and "no slide could be opened" in err


@pytest.mark.parametrize("name, kind", [("scan.png", "PNG"), ("scan.jpg", "JPEG"),
                                        ("export.svs", "JPEG")])
def test_a_plain_image_given_as_a_slide_is_said_to_be_one(capsys, tmp_path, name, kind):
    from PIL import Image

    path = tmp_path / name
    Image.new("RGB", (64, 48), (200, 120, 190)).save(path, format=kind)
    with pytest.warns(UserWarning, match=f"skipping {name}"):
        code, err = run(capsys, path, "--port", 0)
    assert code == 2 and f"it is a {kind} image, not a whole-slide image" in err
    assert "TIFF" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", [["--max-scale", "9"], ["--max-scale", "1"],
                                    ["--threads", "0"], ["--quality", "0"],
                                    ["--memory-cache-mb", "-1"], ["--port", "70000"],
                                    ["--allowed-host", "http://viewer.lan"],
                                    ["--allowed-host", "viewer.lan:8765"]])
def test_invalid_options_are_errors(capsys, tiff, option):
    code, err = run(capsys, tiff, "--port", 0, *option)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_a_port_in_use_is_an_error(capsys, tiff):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, err = run(capsys, tiff, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err


@pytest.mark.parametrize("host", ["a\x00b", "\udcff\udcfe"])
def test_a_host_no_address_can_spell_is_an_error(capsys, tiff, host):
    """A NUL, or bytes of a non-UTF-8 argument (a surrogate escape), in --host: the socket
    library raised TypeError ("encoding of hostname failed"), a traceback."""
    code, err = run(capsys, tiff, "--port", 0, "--host", host)
    assert code == 2 and err.startswith("iste: error: cannot listen on")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_console_names_the_files_and_the_model_is_named_by_its_architecture(tmp_path):
    from iste.cli.serve import _model_name
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    model = build_model(tiny_config("iste"))
    assert _model_name(model, str(tmp_path / "PATIENT-Doe" / "model.safetensors")) == \
        "iste/edsr-baseline"
    assert _model_name(model, None) == "shipped default"


def test_the_console_names_each_slide_on_one_line(tmp_path, tiff, capsys, monkeypatch):
    # a slide named with a line break was listed over two lines, the second without 'iste:'
    import shutil

    import iste.serve.runner
    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    slide = shutil.copy(tiff, tmp_path / "new\nline.tiff")
    model = save_model(build_model(tiny_config("liif")), tmp_path / "tiny.safetensors")
    monkeypatch.setattr(iste.serve.runner, "serve_forever", lambda app, sock: None)
    code, err = run(capsys, slide, "--model", model, "--port", "0")
    assert code == 0, err
    assert f"iste: Slide 1: {tmp_path}/new\\nline.tiff" in err.splitlines(), err
    assert all(line.startswith("iste: ") for line in err.splitlines()), err


def test_a_closed_terminal_stops_the_server_in_one_line(tmp_path, tiff, capsys):
    # SIGHUP (the ssh session closed), which uvicorn leaves alone, was raised inside its event
    # loop: the application's lifespan was cancelled and logged a traceback wall before
    # 'iste: stopped by SIGHUP' (SIGTERM and Ctrl-C shut the server down quietly)
    import os
    import signal
    import threading
    import time
    import urllib.request

    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    model = save_model(build_model(tiny_config("liif")), tmp_path / "tiny.safetensors")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    ended = threading.Event()

    def hang_up_once_it_answers():
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            os.kill(os.getpid(), signal.SIGHUP)
            if not ended.wait(120):  # the server went on: Ctrl-C ends it, the test fails
                os.kill(os.getpid(), signal.SIGINT)
            return

    # SIGHUP as a terminal leaves it: under nohup (or a CI runner that ignores it) the
    # server rightly ignores it too, and served on for good
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        threading.Thread(target=hang_up_once_it_answers, daemon=True).start()
        code, err = run(capsys, tiff, "--model", model, "--port", port, "--cache-dir",
                        tmp_path / "cache")
    finally:
        ended.set()
        signal.signal(signal.SIGHUP, previous)
    assert code == 128 + signal.SIGHUP
    assert "Traceback" not in err and err.splitlines()[-1] == "iste: stopped by SIGHUP", err


def test_a_console_on_a_full_disk_does_not_stop_the_server(tmp_path, tiff, capsys,
                                                            monkeypatch):
    # `nohup iste serve ... > serve.log 2>&1` on a full disk: the line naming the first slide
    # raised ENOSPC and the server ended (exit code 1, nothing said: there was nowhere to say
    # it) before it served a tile; a full log disk is no reason not to serve
    import sys

    import iste.serve.runner
    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    model = save_model(build_model(tiny_config("liif")), tmp_path / "tiny.safetensors")
    served = []
    monkeypatch.setattr(iste.serve.runner, "serve_forever",
                        lambda app, sock: served.append(sock.getsockname()))
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stderr", full)
        code, _ = run(capsys, tiff, "--model", model, "--port", "0", "--disk-cache-mb", "0")
    assert code == 0 and len(served) == 1
