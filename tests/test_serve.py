"""smallcnn serve: the HTTP API, its refusals, micro-batching, shutdown, and the page."""

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke

from smallcnn.serve.app import ServeSettings


def client(run, **settings):
    from fastapi.testclient import TestClient

    from smallcnn.serve import build_app

    app, _ = build_app(run, ServeSettings(**settings))
    return TestClient(app)


def files(*paths):
    return [("files", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


def bomb_png(width=20_000, height=20_000):
    """A PNG header claiming more pixels than Pillow's limit, with almost no data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_every_endpoint_and_predict_json_equal_to_the_cli(trained):
    run, data = trained
    images = [sorted((data / "val" / name).iterdir())[0] for name in ("red", "blue")]
    with client(run) as api:
        assert api.get("/health").json() == {"status": "ready"}
        info = api.get("/model").json()
        assert info["classes"] == ["blue", "green", "red"] and info["image_size"] == 32
        assert info["metrics"]["val_accuracy"] == 1.0 and info["base"] == "small"
        from smallcnn import __version__
        assert info["smallcnn_version"] == __version__

        answer = api.post("/predict?top_k=2", files=files(*images))
        assert answer.status_code == 200, answer.text
        served = answer.json()
        raw = api.post("/predict?name=photo.png", content=images[0].read_bytes(),
                       headers={"content-type": "image/png"}).json()

        metrics = api.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'smallcnn_requests_total{endpoint="/predict",status="200"} 2' in metrics.text
        assert "smallcnn_images_total 3" in metrics.text
        assert 'smallcnn_request_seconds{endpoint="/predict",quantile="0.99"}' in metrics.text
        assert api.get("/metrics?format=json").json()["images"] == 3
        assert "/predict" in api.get("/openapi.json").json()["paths"]
        assert api.get("/docs").status_code == 200

    cli = invoke("predict", *images, "--model", run, "--json", "--top-k", "2")
    expected = json.loads(cli.stdout)
    assert [p["path"] for p in served] == [p.name for p in images]
    assert raw[0]["path"] == "photo.png" and raw[0]["label"] == served[0]["label"]
    for got, want in zip(served, expected):
        assert got.keys() == want.keys()
        assert got["label"] == want["label"] == Path(want["path"]).parent.name
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert np.allclose([t["probability"] for t in got["top"]],
                           [t["probability"] for t in want["top"]], atol=1e-3)


def test_bad_uploads_get_one_clear_sentence_each(trained, tmp_path):
    from smallcnn.errors import DataError
    from smallcnn.data.images import load_image

    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(image.read_bytes()[:60])
    with client(run, max_upload_mb=0.01) as api:
        for name, status in (("notes.txt", 415), ("cut.png", 422)):
            answer = api.post("/predict", files=files(tmp_path / name))
            with pytest.raises(DataError) as expected:  # predict's words for the same file
                load_image(tmp_path / name, 32)
            assert answer.status_code == status
            assert answer.json()["detail"] == str(expected.value).replace(
                str(tmp_path / name), name)
        bomb = api.post("/predict", files=[("files", ("bomb.png", bomb_png(), "image/png"))])
        assert bomb.status_code == 422 and "larger than the limit" in bomb.json()["detail"]
        big = api.post("/predict", content=b"\xff" * 20_000, headers={"content-type": "image/jpeg"})
        assert big.status_code == 413 and "0.01 MB" in big.json()["detail"]
        for empty in (api.post("/predict", files={"note": (None, "hello")}),
                      api.post("/predict", content=b"", headers={"content-type": "image/png"})):
            assert empty.status_code == 422 and "no image" in empty.json()["detail"]
        text = api.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
        assert text.status_code == 415 and "multipart/form-data" in text.json()["detail"]
        assert api.post("/predict?top_k=0", files=files(image)).status_code == 422
        assert api.get("/files/etc/passwd").status_code == 404  # no path parameters


def test_every_malformed_multipart_body_is_a_422_with_its_reason(trained, monkeypatch):
    from python_multipart import exceptions
    from python_multipart import multipart as parser
    from python_multipart.multipart import MAX_BOUNDARY_LENGTH

    from smallcnn.serve.uploads import MALFORMED_MULTIPART, RequestError, uploads

    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0].read_bytes()
    long = b"a" * (MAX_BOUNDARY_LENGTH + 1)
    disposition = b'Content-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    part = disposition + image
    bodies = {  # what python-multipart refuses: (the Content-Type's boundary, the body)
        "boundary": (long, b"--" + long + b"\r\n" + part + b"\r\n--" + long + b"--\r\n"),
        "body": (b"x", b"--y\r\n" + part),
        "field name": (b"x", b"--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--\r\n"),
        "base64": (b"x", b"--x\r\nContent-Transfer-Encoding: base64\r\n" + disposition +
                   b"abcde\r\n--x--\r\n"),
    }
    with client(run) as api:
        for path in ("/predict", "/gradcam"):
            for what, (boundary, body) in bodies.items():
                answer = api.post(path, content=body, headers={
                    "content-type": "multipart/form-data; boundary=" + boundary.decode()})
                assert answer.status_code == 422, (path, what, answer.text)
                detail = answer.json()["detail"]
                assert detail.startswith(MALFORMED_MULTIPART.split("{")[0]), detail
                assert "\n" not in detail and len(detail) > len(MALFORMED_MULTIPART), detail
                assert what != "boundary" or f"{MAX_BOUNDARY_LENGTH}" in detail, detail

    # Every error class python-multipart has, wherever it is raised, is the client's.
    classes = [c for c in vars(exceptions).values()
               if isinstance(c, type) and issubclass(c, Exception)]
    for error in classes:
        def refuse(*args, **kwargs):
            raise error(f"{error.__name__} here")

        monkeypatch.setattr(parser.FormParser, "__init__", refuse)
        with pytest.raises(RequestError) as refused:
            uploads("multipart/form-data; boundary=x", b"--x--\r\n", None)
        assert refused.value.status == 422 and f"{error.__name__} here" in refused.value.detail
    monkeypatch.undo()
    with pytest.raises(RequestError) as refused:  # a header python-multipart cannot encode
        uploads("multipart/form-data; boundary=\u2603", b"--x--\r\n", None)
    assert refused.value.status == 422


def concurrently(*calls):
    """The results of calling each function in a thread of its own, all at once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def timed(call):
    started = time.perf_counter()
    return call(), time.perf_counter() - started


def test_a_full_queue_answers_503_and_a_request_larger_than_it_413(trained, monkeypatch):
    from fastapi.testclient import TestClient

    from smallcnn.inference.predict import load
    from smallcnn.serve.app import create_app

    run, data = trained
    images = sorted((data / "val" / "red").iterdir())[:3]
    classifier = load(run)
    engine = classifier.batch_runner(2)
    batches = []

    def slow(pixels):  # keeps the first request's images waiting while the second comes
        batches.append(len(pixels))
        time.sleep(0.5 if len(batches) > 1 else 0)  # the warm-up batch runs at once
        return engine(pixels)

    app = create_app(classifier, slow, ServeSettings(max_batch=2, max_queue=2))
    with TestClient(app) as api:
        first, second = concurrently(lambda: api.post("/predict", files=files(*images[:2])),
                                     lambda: time.sleep(0.2) or api.post(
                                         "/predict", files=files(*images[:2])))
        assert first.status_code == 200 and second.status_code == 503
        assert second.headers["retry-after"] == "1" and "busy" in second.json()["detail"]
        batches.clear()
        too_many = api.post("/predict", files=files(*images))  # could never be queued
        assert too_many.status_code == 413 and batches == []
        assert "at most 2 images per request (--max-queue)" in too_many.json()["detail"]


def test_more_files_than_max_files_are_refused_before_any_is_decoded(trained, monkeypatch):
    from smallcnn.serve import uploads as served

    run, data = trained
    images = sorted((data / "val" / "red").iterdir())[:3]
    decoded = []
    real = served.decode_image
    monkeypatch.setattr(served, "decode_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    with client(run, max_files=2) as api:
        answer = api.post("/predict", files=files(*images))
        assert answer.status_code == 413 and decoded == []
        assert "at most 2 images per request (--max-files)" in answer.json()["detail"]
        assert api.post("/predict", files=files(*images[:2])).status_code == 200
        assert len(decoded) == 2


def test_decoding_runs_at_most_one_image_per_core_at_once(trained, monkeypatch):
    import threading

    from smallcnn.serve import uploads as served

    run, data = trained
    images = sorted((data / "val" / "red").iterdir())[:2]
    slots = 2
    monkeypatch.setattr(served, "DECODE_SLOTS", slots)
    busy, most, lock = [0], [0], threading.Lock()
    real = served.decode_image

    def counted(*args, **kwargs):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.1)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(served, "decode_image", counted)
    with client(run) as api:
        answers = concurrently(*[lambda: api.post("/predict", files=files(*images))] * 4)
    assert [a.status_code for a in answers] == [200] * 4
    assert most[0] == slots  # eight images in four requests, never more than two at once


def test_an_image_above_max_pixels_is_refused_from_its_header_naming_the_limit(trained):
    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]  # 40x40: 1,600 pixels
    default = ServeSettings().max_pixels
    side = int(default**0.5) + 1  # just above the default, below Pillow's own limit
    with client(run) as api:
        answer = api.post("/predict", files=[("files", ("big.png", bomb_png(side, side),
                                                        "image/png"))])
        assert answer.status_code == 422, answer.text
        assert f"{side}x{side}" in answer.json()["detail"]
        assert f"{default:,}" in answer.json()["detail"]
    with client(run, max_pixels=1000) as api:
        answer = api.post("/predict", files=files(image))
        assert answer.status_code == 422 and "1,000" in answer.json()["detail"]


def test_an_unexpected_error_is_a_logged_json_500_and_invalid_parameters_one_line(
        trained, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    from smallcnn.errors import DataError
    from smallcnn.serve import build_app
    from smallcnn.serve import uploads as served
    from smallcnn.serve.app import INTERNAL_ERROR

    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    app, _ = build_app(run, ServeSettings())
    with TestClient(app, raise_server_exceptions=False) as api:
        def broken(*args, **kwargs):
            raise RuntimeError("a bug\nwith a second line")

        monkeypatch.setattr(served, "decode_image", broken)
        answer = api.post("/predict", files=files(image))
        assert answer.status_code == 500 and answer.json() == {"detail": INTERNAL_ERROR}
        assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
        assert 'endpoint="/predict",status="500"' in api.get("/metrics").text

        def refused(*args, **kwargs):
            raise DataError("cannot use this image.")

        monkeypatch.setattr(served, "decode_image", refused)
        answer = api.post("/predict", files=files(image))
        assert answer.status_code == 422 and answer.json() == {"detail": "cannot use this image."}
        monkeypatch.undo()

        for query in ("/predict?top_k=0", "/predict?top_k=many"):
            answer = api.post(query, files=files(image))
            detail = answer.json()["detail"]
            assert answer.status_code == 422 and isinstance(detail, str), detail
            assert "top_k" in detail and "\n" not in detail
        detail = api.get("/metrics?format=xml").json()["detail"]
        assert isinstance(detail, str) and "format" in detail and "'xml'" in detail


def test_gradcam_has_a_limit_of_its_own_and_does_not_hold_up_predictions(trained, monkeypatch):
    from smallcnn.serve import routes as served

    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    overlay = 0.4  # seconds of each (fake) Grad-CAM in the engine's thread
    monkeypatch.setattr(served, "gradcam_png", lambda *args: time.sleep(overlay) or b"png")
    cams = 8
    with client(run, max_gradcam=cams) as api:
        def late_predict():
            time.sleep(overlay / 2)  # once the Grad-CAMs are waiting
            return timed(lambda: api.post("/predict", files=files(image)))

        *answers, (predicted, seconds) = concurrently(
            *[lambda: api.post("/gradcam", files=files(image))] * cams, late_predict)
        assert [a.status_code for a in answers] == [200] * cams
        assert predicted.status_code == 200
        assert seconds < 3 * overlay  # behind one Grad-CAM at most, not behind eight (3.2 s)
    with client(run, max_gradcam=2) as api:
        answers = concurrently(*[lambda: api.post("/gradcam", files=files(image))] * 5)
        busy = [a for a in answers if a.status_code == 503]
        assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503]
        assert all(a.headers["retry-after"] == "1" for a in busy)
        assert "--max-gradcam" in busy[0].json()["detail"]
        two = api.post("/gradcam", files=files(image, image))
        assert two.status_code == 413 and "at most 1 image per request" in two.json()["detail"]


def test_predictions_do_not_wait_while_the_first_gradcam_loads_tensorflow(trained, monkeypatch):
    """A first Grad-CAM loads TensorFlow and the Keras model (17-33 s in the soak) outside
    the engine's thread; predictions asked meanwhile are answered at once."""
    from smallcnn.serve import routes as served

    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    loading = 2.0  # seconds of the (fake) first load
    monkeypatch.setattr(served, "load_gradcam", lambda classifier: time.sleep(loading))
    monkeypatch.setattr(served, "gradcam_png", lambda *args: b"png")
    with client(run) as api:
        def late_predict():
            time.sleep(loading / 4)  # once the Grad-CAM is loading
            return timed(lambda: api.post("/predict", files=files(image)))

        cam, (predicted, seconds) = concurrently(
            lambda: api.post("/gradcam", files=files(image)), late_predict)
        assert cam.status_code == 200 and predicted.status_code == 200
        assert seconds < loading / 2


def test_options_out_of_range_are_refused_at_start_in_one_line(trained):
    from smallcnn.errors import UsageError
    from smallcnn.serve import build_app

    run, _ = trained
    bad = [("--max-upload-mb", {"max_upload_mb": float("inf")}),
           ("--max-upload-mb", {"max_upload_mb": float("nan")}),
           ("--max-upload-mb", {"max_upload_mb": 0}),
           ("--max-wait-ms", {"max_wait_ms": float("inf")}),
           ("--max-wait-ms", {"max_wait_ms": -1}),
           ("--max-batch", {"max_batch": 0}),
           ("--max-batch", {"max_batch": 8, "max_queue": 4}),
           ("--max-queue", {"max_queue": 0}),
           ("--max-files", {"max_files": 0}),
           ("--max-pixels", {"max_pixels": 0}),
           ("--max-gradcam", {"max_gradcam": 0}),
           ("--top-k", {"top_k": 0}),
           ("--port", {"port": 70_000}),
           ("--token", {"token": "pässwörd"}),  # headers are Latin-1: it could never match
           ("--token", {"token": "two words"}),
           ("--token", {"token": ""})]
    for option, values in bad:
        with pytest.raises(UsageError) as refused:
            build_app(run, ServeSettings(**values))
        message = str(refused.value)
        assert option in message and "\n" not in message, (values, message)
    done = invoke("serve", run, "--max-upload-mb", "inf")
    assert done.exit_code == 2 and "--max-upload-mb" in done.stderr
    assert "Traceback" not in done.output and len(done.stderr.strip().splitlines()) == 1


def test_token_and_cors(trained):
    run, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    origin = {"Origin": "https://example.org"}
    with client(run) as api:
        answer = api.post("/predict", files=files(image), headers=origin)
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    with client(run, token="s3cret", cors="https://example.org") as api:
        assert api.post("/predict", files=files(image)).status_code == 401
        assert api.get("/model").status_code == 401
        assert api.get("/health").status_code == 200 and api.get("/").status_code == 200
        answer = api.post("/predict", files=files(image),
                          headers={"Authorization": "Bearer s3cret", **origin})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://example.org"
        preflight = api.options("/predict", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200  # a browser's preflight carries no token
        assert api.post("/predict", files=files(image),
                        headers={"Authorization": "Bearer wrong"}).status_code == 401
        for scheme in ("bearer", "BEARER", "Bearer "):  # the scheme's name in any case (RFC 7235)
            assert api.post("/predict", files=files(image),
                            headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
        latin = api.post("/predict", files=files(image),
                         headers={"Authorization": "Bearer s\xe4cret".encode("latin-1")})
        assert latin.status_code == 401


def test_the_page_is_one_offline_file(trained):
    run, _ = trained
    with client(run) as api:
        page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "multiple" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no tracker


def test_micro_batching_gathers_concurrent_requests():
    from smallcnn.serve.batcher import MicroBatcher

    sizes = []

    def run(pixels):
        sizes.append(len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :2].astype(float)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50, max_queue=64)
        await batcher.start()
        images = [np.full((2, 2, 3), i, np.uint8) for i in range(10)]
        answers = await asyncio.gather(*(batcher.submit([image]) for image in images))
        started = time.perf_counter()
        alone = await batcher.submit([images[3]])
        waited = time.perf_counter() - started
        await batcher.stop()
        return answers, alone, waited

    answers, alone, waited = asyncio.run(scenario())
    assert [a[0][0] for a in answers] == list(range(10))  # each request gets its own row
    assert sizes[:3] == [4, 4, 2]  # ten concurrent requests in three batches
    assert sizes[3] == 1 and alone[0][0] == 3 and 0.04 < waited < 1.0  # a lone one waits once


def test_an_engine_error_reaches_every_waiting_request():
    from smallcnn.serve.batcher import MicroBatcher

    def run(pixels):
        raise RuntimeError("engine broke")

    async def scenario():
        batcher = MicroBatcher(run, max_batch=8, max_wait_ms=1)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.zeros((2, 2, 3))]) for _ in range(3)),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    assert [str(r) for r in asyncio.run(scenario())] == ["engine broke"] * 3


def test_listening_beyond_this_machine_without_a_token_is_warned_about():
    from smallcnn.serve import exposure_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert exposure_warning(ServeSettings()) is None
    assert "without authentication" in exposure_warning(ServeSettings(host="0.0.0.0"))
    assert exposure_warning(ServeSettings(host="0.0.0.0", token="t")) is None


@pytest.mark.heavy
def test_an_exported_tflite_serves_and_a_converted_run_needs_no_tensorflow(trained, tmp_path):
    from smallcnn.inference.export import export

    run, data = trained
    image = sorted((data / "val" / "blue").iterdir())[0]
    exported = export(run, format="tflite", out=tmp_path / "model.tflite").path
    with client(exported) as api:
        assert api.post("/predict", files=files(image)).json()[0]["label"] == "blue"
        assert api.get("/model").json()["gradcam"] is False
        refused = api.post("/gradcam", files=files(image))
        assert refused.status_code == 501 and "exported model" in refused.json()["detail"]
    with client(run):  # converts the run's model to LiteRT, into this test's cache
        pass
    code = f"""
import sys
from fastapi.testclient import TestClient
from smallcnn.serve import build_app
app, _ = build_app({str(run)!r})
with TestClient(app) as api:
    answer = api.post("/predict", files=[("files", ("i.png", open({str(image)!r}, "rb").read()))])
print(answer.json()[0]["label"], "tensorflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split()[-2:] == ["blue", "False"], done.stderr[-2000:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.heavy  # a server in a process of its own (8 s)
def test_sigterm_answers_and_exits_0(trained):
    import httpx

    run, data = trained
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "smallcnn", "serve", str(run), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.time() + 90
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        image = sorted((data / "val" / "green").iterdir())[0]
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", files=files(image))
        assert answer.json()[0]["label"] == "green"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
    output = server.stdout.read()
    assert f"at http://127.0.0.1:{port}" in output


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"),
                    reason="needs Debian's chromium and chromium-driver packages")
def test_the_page_classifies_two_uploads_in_headless_chromium(trained, tmp_path):
    pytest.importorskip("selenium", reason="needs the selenium package")
    import threading

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from smallcnn.serve import build_app

    run, data = trained
    port = free_port()
    app, _ = build_app(run, ServeSettings(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        assert server.started, "the server did not start"
        browser.get(f"http://127.0.0.1:{port}/")
        chosen = [sorted((data / "val" / name).iterdir())[0] for name in ("red", "blue")]
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in chosen))
        WebDriverWait(browser, 30).until(
            lambda b: len([c for c in b.find_elements(By.CSS_SELECTOR, ".card")
                           if c.get_attribute("data-label")]) == 2)
        labels = {c.find_element(By.CSS_SELECTOR, ".name").text: c.get_attribute("data-label")
                  for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
        assert labels == {p.name: p.parent.name for p in chosen}
        assert "3 classes" in browser.find_element(By.ID, "model").text
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)
