"""``spar-fast serve`` without a browser: the request handling of the server (upload, examples,
query files, limits, one-line errors), the model slot, the turns, and the command line."""
import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import (BACKBONE, CLASSES, WEIGHTS, decode_png, expected_labels, photo, png_b64,
                           post_segment, request, running_server, write_examples)
from spar_fast.cli import main
from spar_fast.jobs.serve.examples import RequestError
from spar_fast.jobs.serve.turns import Turns

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def server(examples, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAR_FAST_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        with running_server(examples=str(examples["image"].parent)) as srv:
            yield srv


def upload(image, name="photo.png"):
    return {"name": name, "data": png_b64(image)}


def test_page_and_config(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and b'id="segment"' in page and b"<script" in page
    assert b"http://" not in page and b"https://" not in page  # nothing fetched from elsewhere
    status, config = request(server, "GET", "/api/config")
    assert status == 200
    assert config["backbones"] == [BACKBONE] and config["weights"] == list(WEIGHTS)
    assert config["examples"] == {"image": ["blobs.png"], "class file": ["outdoor.txt"],
                                  "query file": ["outdoor.safetensors"]}
    status, data = request(server, "GET", "/api/example/blobs.png")
    assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_upload_matches_the_api(server, mode):
    image = photo(7, (37, 83))
    status, answer = post_segment(server, image=upload(image), classes="sky\ntree, trees; road, street",
                                  mode=mode, stride=32, resize=False)
    assert status == 200, answer
    labels = decode_png(answer["labels"])
    want = expected_labels(image, mode=mode, stride=32)
    np.testing.assert_array_equal(labels, want)
    assert answer["size"] == [37, 83] and decode_png(answer["overlay"]).shape == (37, 83, 3)
    counts = np.bincount(want.reshape(-1), minlength=3)
    assert [item["index"] for item in answer["legend"]] == [k for k in np.argsort(-counts, kind="stable")
                                                             if counts[k]]
    assert [item["name"] for item in answer["legend"]] == [CLASSES[i["index"]].split(",")[0]
                                                           for i in answer["legend"]]
    assert sum(item["fraction"] for item in answer["legend"]) == pytest.approx(1.0)
    assert answer["timing"]["segment_s"] > 0 and answer["timing"]["device"] == "cpu"


def test_examples_and_query_files(server, examples):
    from PIL import Image
    image = np.array(Image.open(examples["image"]).convert("RGB"))
    want = expected_labels(image)
    for fields in ({"class_file": "outdoor.txt"}, {"example_queries": "outdoor.safetensors"},
                   {"query_file": {"name": "q.safetensors",
                                   "data": base64.b64encode(examples["queries"].read_bytes()).decode()}}):
        status, answer = post_segment(server, example_image="blobs.png", resize=False, **fields)
        assert status == 200, (fields, answer)
        np.testing.assert_array_equal(decode_png(answer["labels"]), want)


def test_refinement(server):
    image = photo(3, (32, 48))
    status, answer = post_segment(server, image=upload(image), classes="sky; road", refine="lposs",
                                  resize=False)
    assert status == 200, answer
    np.testing.assert_array_equal(decode_png(answer["labels"]),
                                  expected_labels(image, ("sky", "road"), refine="lposs"))


def _not_png(_):
    return {"image": {"name": "notes.png", "data": base64.b64encode(b"hello, not an image").decode()}}


@pytest.mark.parametrize("fields,status,words", [
    ({"image": {"name": "x.png", "data": "%%%"}}, 400, "image 'x.png' is not valid base64 data"),
    ({"image": {"name": "x.png", "data": ""}}, 400, "is not an object with|is empty"),
    ("not_png", 400, "notes.png: not an image file"),
    ({"class_file": "voc.txt", "classes": None}, 404, "unknown class file 'voc.txt' (offered: outdoor.txt)"),
    ({"example_image": "../etc/passwd", "image": None}, 404, "unknown image '../etc/passwd'"),
    ({"example_queries": "outdoor.txt", "classes": None}, 404, "unknown query file"),
    ({"classes": " ; \n"}, 400, "class list has no classes"),
    ({"classes": "sky, , clouds"}, 400, "has an empty name"),
    ({"class_file": "outdoor.txt"}, 400, "give the classes one way"),
    ({"backbone": "siglip2-b16-512"}, 400, "backbone must be one of siglip2-tiny"),
    ({"weights": "hub"}, 400, "weights must be one of random:0, random:1"),
    ({"mode": "tiles"}, 400, "mode must be one of single, slide"),
    ({"refine": "crf"}, 400, "refine must be one of none, lposs, lposs+"),
    ({"stride": 0}, 400, "stride must be a whole number"),
    ({"stride": 2.5}, 400, "stride must be a whole number"),
    ({"resize": "yes"}, 400, "resize must be true or false"),
])
def test_bad_requests(server, fields, status, words):
    body = {"image": upload(photo(0)), "classes": "sky; road", "resize": False}
    body.update(_not_png(None) if fields == "not_png" else fields)
    body = {k: v for k, v in body.items() if v is not None}
    got, answer = post_segment(server, **body)
    assert got == status, answer
    message = answer["error"]
    assert "\n" not in message and any(w in message for w in words.split("|")), message


def test_a_query_file_of_another_backbone(server, tmp_path):
    from spar_fast.backbones import Backbone
    from spar_fast.segmentation.query_file import compute_query_set, save_query_set

    path = tmp_path / "other.safetensors"
    save_query_set(compute_query_set(Backbone.from_pretrained("openclip-tiny", weights="random"), ["a", "b"],
                                     progress=False), path)
    status, answer = post_segment(server, image=upload(photo(0)), resize=False,
                                  query_file={"name": "other.safetensors",
                                              "data": base64.b64encode(path.read_bytes()).decode()})
    assert status == 400 and "made for backbone openclip-tiny" in answer["error"], answer


def test_protocol_errors(server):
    status, answer = request(server, "POST", "/api/segment", b"{", {"Content-Type": "application/json"})
    assert status == 400 and answer["error"] == "the request is not JSON"
    status, answer = request(server, "POST", "/api/segment", b"[]", {"Content-Type": "application/json"})
    assert status == 400 and "JSON object" in answer["error"]
    status, answer = request(server, "POST", "/api/segment", b"a=1", {"Content-Type": "text/plain"})
    assert status == 415
    status, answer = request(server, "GET", "/etc/passwd")
    assert status == 404 and "no page at /etc/passwd" in answer["error"]
    status, answer = request(server, "GET", "/api/example/outdoor.txt")
    assert status == 404 and "unknown image 'outdoor.txt'" in answer["error"]


def test_only_loopback_names_are_answered(server):
    """A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) gets nothing."""
    for method in ("GET", "POST"):
        status, answer = request(server, method, "/api/config" if method == "GET" else "/api/segment",
                                 b"{}", {"Host": "attacker.example:80", "Content-Type": "application/json"})
        assert status == 403 and "answers only at http://127.0.0.1:" in answer["error"], answer
    status, _ = request(server, "GET", "/api/config", headers={"Host": f"localhost:{server.server_address[1]}"})
    assert status == 200


def test_page_headers(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert "default-src 'none'" in resp.getheader("Content-Security-Policy")
    assert resp.getheader("Content-Type") == "text/html; charset=utf-8"


def test_requests_at_once_take_turns(server, monkeypatch):
    """Three clients at once: all answered, never two segmentations at the same time."""
    import spar_fast.jobs.serve.server as server_module

    active, most, answers = [], [], []
    real = server_module.run_segment

    def counted(*args):
        active.append(1)
        most.append(len(active))
        time.sleep(0.3)  # long enough that the other clients arrive while this one runs
        try:
            return real(*args)
        finally:
            active.pop()

    monkeypatch.setattr(server_module, "run_segment", counted)

    def client(seed):
        answers.append(post_segment(server, image=upload(photo(seed, (48, 64))), classes="sky; road",
                                    resize=False))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [status for status, _ in answers] == [200, 200, 200] and max(most) == 1
    assert max(answer["timing"]["waited_s"] for _, answer in answers) > 0.2


def test_limits(tmp_path):
    """An image over the pixel limit (from its header) and a body over the upload limit (from its
    Content-Length, before it is read)."""
    with running_server(max_pixels=1000, max_upload_mb=1) as srv:
        status, answer = post_segment(srv, image=upload(photo(0, (40, 56))), classes="a; b")
        assert status == 400, answer
        assert "40x56 = 0.0 M pixels exceeds the limit" in answer["error"] and "photo.png" in answer["error"]
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.putrequest("POST", "/api/segment")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(3 << 20))
        conn.endheaders()  # the body is never sent: the answer comes from the header
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert resp.status == 413 and "3.0 MB exceeds the limit of 1 MB" in answer["error"], answer


def test_one_model_in_memory(server):
    """Asking for other weights replaces the model (the old one is freed); the same ones reuse it."""
    image = upload(photo(2, (32, 32)))
    status, first = post_segment(server, image=image, classes="a; b", weights=WEIGHTS[0], resize=False)
    assert status == 200
    held = weakref.ref(server.slot.model)
    status, second = post_segment(server, image=image, classes="a; b", weights=WEIGHTS[1], resize=False)
    assert status == 200 and server.slot.key == (BACKBONE, WEIGHTS[1])
    assert second["timing"]["load_s"] > 0 and held() is None
    status, third = post_segment(server, image=image, classes="a; b", weights=WEIGHTS[1], resize=False)
    assert status == 200 and third["timing"]["load_s"] == 0


def test_turns_run_one_at_a_time_in_order():
    turns, order, running = Turns(max_waiting=2), [], []
    gate = threading.Event()

    def job(name):
        with turns.take():
            running.append(name)
            assert len(running) == 1
            if name == "first":
                gate.wait(10)
            order.append(name)
            running.remove(name)

    def wait_for(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "the turns never got there"
            time.sleep(0.01)

    threads = [threading.Thread(target=job, args=("first",), daemon=True)]
    threads[0].start()
    wait_for(lambda: running)
    for name in ("second", "third"):
        threads.append(threading.Thread(target=job, args=(name,), daemon=True))
        threads[-1].start()
        wait_for(lambda: turns.waiting == len(threads) - 1)
    with pytest.raises(RequestError, match="busy: 2 requests are already waiting") as info:
        with turns.take():
            pass
    assert info.value.status == 503
    gate.set()
    for t in threads:
        t.join(10)
    assert order == ["first", "second", "third"] and turns.waiting == 0


@pytest.mark.parametrize("args,words", [
    (["--port", "70000"], "port must be <= 65535"),
    (["--examples", "no/such/folder"], "examples folder not found"),
    (["--max-pixels", "0"], "max_pixels must be >= 1"),
    (["--weights", "nope.safetensors"], "weights file not found"),
])
def test_command_errors(capsys, args, words):
    rc = main(["serve", "--backbone", BACKBONE, "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err


def test_port_in_use(capsys, server):
    rc = main(["serve", "--backbone", BACKBONE, "--weights", "random", "--device", "cpu",
               "--port", str(server.server_address[1])])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot listen on 127.0.0.1" in err and "choose another --port" in err, err


@pytest.mark.slow
def test_command_serves(tmp_path):
    """``spar-fast serve --port 0`` prints its address and answers there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "spar_fast", "serve", "--port", "0", "--backbone", BACKBONE,
                             "--weights", "random", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("spar-fast serve: http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.split()[2]
        import urllib.request
        config = json.loads(urllib.request.urlopen(url + "api/config", timeout=60).read())
        assert config["backbones"] == [BACKBONE] and config["weights"] == ["random:0"]
    finally:
        proc.terminate()
        proc.wait(30)
