"""`smallcnn label POOL --data DATA`: the labelling page's API (FastAPI's TestClient), what
it writes into DATA, and the page itself in headless Chromium.

The features are the images' mean colours and a few numbers drawn from their contents (a
stand-in for the base's, which `pool.pool_features` computes and tests of suggest
cover): the session, the writes and the retraining are the real ones."""

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, invoke, make_image
from fastapi.testclient import TestClient
from PIL import Image

from smallcnn.data import check
from smallcnn.data.dataset import find_dataset
from smallcnn.data.table import read_table
from smallcnn.errors import DataError, UsageError
from smallcnn.labels.strategies import STRATEGIES
from smallcnn.labels.pool import PoolFeatures, class_list, scanned
from smallcnn.progress import Reporter
from smallcnn.serve import label_store
from smallcnn.serve.label_routes import MOST_AT_ONCE, create_label_app
from smallcnn.serve.label_store import JOURNAL, NOT_ANY, SKIP, LabelStore
from smallcnn.serve.labelling import (
    ACCEPT_KEY,
    EVERY,
    Labelling,
    LabelSettings,
    class_keys,
)


def features_of(paths, classes, scan_root=None):
    """Stand-in features: the mean colour (centred, 16 times over, as a base's many features
    say much the same) and 16 numbers seeded by the file's bytes; the files scanned first,
    as `pool.pool_features` scans them."""
    scanned(paths, Reporter(), root=scan_root)
    rows = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        seed = int(hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8], 16)
        noise = np.random.default_rng(seed).normal(0, 1, 16)
        rows.append(np.concatenate([np.tile((pixels.mean((0, 1)) - 128) / 64, 16), noise]))
    return PoolFeatures(list(paths), np.asarray(rows, np.float32).reshape(len(paths), 64), [],
                        list(classes))


def make_pool(folder, per_class=10, classes=("red", "blue"), seed=1):
    """Unlabelled images, their colour in their names (the answer a person would give)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in classes:
        for i in range(per_class):
            make_image(rng, COLORS[name], 32).save(folder / f"{name}-{i:02d}.png")
    return sorted(str(p) for p in folder.iterdir())


def split_data(root, per_class=3, classes=("red", "blue"), seed=2):
    """DATA with empty train/<class>/ folders and a few validation images of each class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
        for i in range(per_class):
            make_image(rng, COLORS[name], 32).save(root / "val" / name / f"v{i}.png")
    return root


def start(pool, data, table=None, classes=None, every=EVERY):
    labelling = Labelling(pool, LabelStore(data, table), features_of, classes, every=every)
    return labelling, TestClient(create_label_app(labelling, LabelSettings(every=every)))


def answer_next(client, answer=None):
    item = client.get("/api/next").json()[0]
    given = answer or item["name"].split("-")[0]
    response = client.post("/api/answer", json={"id": item["id"], "answer": given})
    assert response.status_code == 200, response.text
    return item, response.json()


def test_class_answers_are_copies_written_at_once_into_the_class_folders(tmp_path):
    pool = make_pool(tmp_path / "pool")
    data = split_data(tmp_path / "data")
    _, client = start(pool, data)
    state = client.get("/api/state").json()
    assert state["classes"] == ["blue", "red"] and state["remaining"] == len(pool)
    assert state["keys"] == {"blue": ["1", "b"], "red": ["2", "r"]}
    assert client.get("/").text.count("api/answer") == 1
    item, done = answer_next(client)
    written = Path(done["written"])
    # At once, copied (the pool file stays), into train/<class>/ under the pool file's name.
    assert written.parent == data / "train" / done["answer"] and written.name == item["name"]
    assert written.read_bytes() == (tmp_path / "pool" / item["name"]).read_bytes()
    assert all(os.path.exists(p) for p in pool)
    journal = [json.loads(line) for line in (data / JOURNAL).read_text().splitlines()]
    assert journal[-1]["answer"] == done["answer"] and journal[-1]["written"] == str(written)
    # The image is not suggested again, and a second answer for it is a no-op.
    assert item["id"] not in [i["id"] for i in client.get(f"/api/next?count={MOST_AT_ONCE}").json()]
    again = client.post("/api/answer", json={"id": item["id"], "answer": SKIP}).json()
    assert again["repeated"] and again["answer"] == done["answer"]
    assert len(list((data / "train").rglob("*.png"))) == 1


def test_a_name_taken_in_data_gets_a_free_one_and_a_flat_data_set_its_class_folder(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=2)
    data = tmp_path / "flat"
    for name in ("red", "blue"):
        (data / name).mkdir(parents=True)
    other = make_image(np.random.default_rng(9), COLORS["green"], 32)
    _, client = start(pool, data)
    item = client.get("/api/next").json()[0]
    other.save(data / "red" / item["name"])  # a different image under the same name
    done = client.post("/api/answer", json={"id": item["id"], "answer": "red"}).json()
    assert Path(done["written"]).parent == data / "red"
    assert Path(done["written"]).name == Path(item["name"]).stem + "-1.png"


def test_an_image_in_data_by_content_is_never_suggested_test_images_included(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=3)
    data = split_data(tmp_path / "data")
    (data / "test" / "red").mkdir(parents=True)
    shutil.copy(pool[0], data / "test" / "red" / "renamed.png")
    shutil.copy(pool[1], data / "val" / "blue" / "renamed.png")
    labelling, client = start(pool, data)
    assert client.get("/api/state").json()["remaining"] == len(pool) - 2
    assert not {pool[0], pool[1]} & set(labelling.paths)
    assert len(labelling.y) == 6 + 1  # a test image is never trained on


def test_a_table_gains_a_row_per_answer_that_data_table_reads(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=4)
    table = tmp_path / "labels.csv"
    _, client = start(pool, tmp_path, table, classes=["red", "blue"])
    answers = [answer_next(client)[1] for _ in range(3)]
    assert not (tmp_path / "red").exists()  # nothing copied: the table names the pool files
    rows = read_table(table).rows
    assert [(Path(path).name, label) for _, path, label, _ in rows] == \
        [(Path(a["path"]).name, a["answer"]) for a in answers]
    # A restart reads the table: its images are known by path and content.
    _, client = start(pool, tmp_path, table)
    assert client.get("/api/state").json()["remaining"] == len(pool) - 3
    assert (tmp_path / f".{table.name}.labelling.jsonl").exists()


def test_skip_and_not_any_class_are_journaled_and_a_restart_resumes(tmp_path):
    pool = make_pool(tmp_path / "pool")
    data = split_data(tmp_path / "data")
    labelling, client = start(pool, data)
    answered = [answer_next(client, SKIP)[0]["id"], answer_next(client, NOT_ANY)[0]["id"],
                answer_next(client)[0]["id"]]
    names = {labelling.paths[i] for i in answered}
    assert len(list((data / "train").rglob("*.png"))) == 1  # skip and none write no image
    del labelling, client  # as if the process died here: every answer is already written
    labelling, client = start(pool, data)
    state = client.get("/api/state").json()
    assert state["remaining"] == len(pool) - 3 and state["labels"] == 6 + 1
    shown = {labelling.paths[i["id"]] for i in
             client.get(f"/api/next?count={MOST_AT_ONCE}").json()}
    assert shown and not shown & names
    with open(data / JOURNAL, "a") as journal:  # a hand edit gone wrong
        journal.write("{not json\n")
    with pytest.raises(DataError, match=f"Line 4 of the labelling journal .*{JOURNAL}"):
        start(pool, data)


def test_retraining_after_every_k_answers_gives_guesses_and_an_accuracy(tmp_path):
    pool = make_pool(tmp_path / "pool")
    data = split_data(tmp_path / "data")
    labelling, client = start(pool, data, every=4)
    assert client.get("/api/next").json()[0]["guess"] is None  # no model, no labels yet
    for _ in range(4):
        answer_next(client)
    labelling.wait_for_training()
    state = client.get("/api/state").json()
    assert state["history"] and state["history"][-1]["labels"] == 6 + 4
    assert state["history"][-1]["accuracy"] == 1.0  # 6 validation images, colours apart
    assert state["model_version"] == 1 and state["until_retraining"] == 4
    items = client.get(f"/api/next?count={MOST_AT_ONCE}").json()
    assert items and all(item["guess"] == item["name"].split("-")[0] for item in items)
    assert client.get(f"/api/item/{items[0]['id']}").json() == items[0]
    journal = [json.loads(line) for line in (data / JOURNAL).read_text().splitlines()]
    assert journal[-1] == {**journal[-1], **state["history"][-1]}


def test_hostile_and_odd_requests_get_a_json_4xx_and_the_server_goes_on(tmp_path, monkeypatch):
    pool = make_pool(tmp_path / "pool")
    data = split_data(tmp_path / "data")
    labelling, client = start(pool, data)
    item = client.get("/api/next").json()[0]
    unknown = client.post("/api/answer", json={"id": 10_000, "answer": "red"})
    assert unknown.status_code == 404 and "No image 10000" in unknown.json()["detail"]
    assert client.get("/api/image/-1").status_code == 404
    assert client.get("/api/item/10000").status_code == 404
    assert client.get("/api/image/x").status_code == 422
    wrong = client.post("/api/answer", json={"id": item["id"], "answer": "purple"})
    assert wrong.status_code == 422 and "'purple' is not a class" in wrong.json()["detail"]
    assert client.post("/api/answer", content=b"{").status_code == 422
    assert client.get(f"/api/image/{item['id']}").content == \
        Path(labelling.paths[item["id"]]).read_bytes()
    os.remove(labelling.paths[item["id"]])  # deleted meanwhile
    gone = client.post("/api/answer", json={"id": item["id"], "answer": "red"})
    assert gone.status_code == 410 and "not there any more" in gone.json()["detail"]
    assert item["id"] not in [i["id"] for i in client.get("/api/next?count=50").json()]
    folder = data / "train" / "blue"
    with monkeypatch.context() as patch:
        if os.geteuid() == 0:  # root writes anywhere: the copy's write refused as it would be
            def refused_write(path, write):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

            patch.setattr(label_store, "atomic_write", refused_write)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            item = client.get("/api/next").json()[0]
            refused = client.post("/api/answer", json={"id": item["id"], "answer": "blue"})
            assert refused.status_code == 409, refused.text
            assert "Cannot write into" in refused.json()["detail"]
            assert "Permission denied" in refused.json()["detail"]
            assert "\n" not in refused.json()["detail"]
        finally:
            folder.chmod(0o755)
    assert client.post("/api/answer", json={"id": item["id"], "answer": "blue"}).json()[
        "written"]  # the same answer, once the folder is writable
    assert client.get("/health").json() == {"status": "ready"}


def test_the_command_refuses_a_bad_option_or_too_few_classes_in_one_line(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=1)
    refusals = [([f"--{name}", str(value)],
                 f"--{name} must be {allowed.describe()}. Received: {value}")
                for name, allowed in LabelSettings.RANGES.items()
                for value in (allowed.low - 1, allowed.high + 1)]
    refusals += [([], "Labelling needs at least 2 classes"),
                 (["--classes", "red"], "--classes needs two or more"),
                 (["--classes", "red,blue", "--strategy", "best"], "Unknown strategy 'best'"),
                 (["--classes", "red,blue", "--strategy", "margin"], "needs a model's")]
    for args, message in refusals:
        result = invoke("label", tmp_path / "pool", "--data", tmp_path / "data", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "data").exists() and len(list((tmp_path / "pool").iterdir())) == len(pool)


@pytest.mark.heavy
def test_with_a_run_the_pool_gets_its_features_and_its_heads_guesses(trained, tmp_path):
    from smallcnn.progress import Reporter
    from smallcnn.serve.labelling import model_features

    run, _ = trained
    classes = ("red", "green", "blue")
    pool = make_pool(tmp_path / "pool", per_class=3, classes=classes)
    data = split_data(tmp_path / "data", classes=classes)
    labelling = Labelling(pool, LabelStore(data), model_features(run, Reporter()), model=run)
    client = TestClient(create_label_app(labelling, LabelSettings()))
    assert labelling.classes == sorted(classes) and labelling.features.shape[0] == len(pool)
    items = client.get(f"/api/next?count={MOST_AT_ONCE}").json()
    assert all(item["guess"] == item["name"].split("-")[0] for item in items)
    assert answer_next(client)[1]["written"]
    with pytest.raises(DataError, match="purple"):
        (data / "train" / "purple").mkdir()
        Labelling(pool, LabelStore(data), model_features(run, Reporter()), model=run)


@pytest.mark.heavy
def test_the_command_serves_the_page_and_sigterm_ends_it_with_0(trained, tmp_path):
    import signal
    import subprocess
    import sys

    import httpx

    run, _ = trained
    pool = make_pool(tmp_path / "pool", per_class=2, classes=("red", "green"))
    data = tmp_path / "data"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "smallcnn", "label", tmp_path / "pool",
                               "--data", data, "--model", run, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline, item = time.time() + 90, None
        while time.time() < deadline and server.poll() is None and item is None:
            try:
                item = httpx.get(f"http://127.0.0.1:{port}/api/next").json()[0]
            except httpx.TransportError:
                time.sleep(0.3)
        assert item is not None, server.stdout.read() if server.poll() is not None else ""
        done = httpx.post(f"http://127.0.0.1:{port}/api/answer",
                          json={"id": item["id"], "answer": item["guess"]}).json()
        assert Path(done["written"]).parent == data / item["name"].split("-")[0]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
    assert f"labelling {len(pool)} images into the class folders of" in server.stdout.read()


@pytest.mark.heavy
def test_a_kill_between_answers_loses_nothing_and_a_restart_resumes(tmp_path):
    import signal
    import subprocess
    import sys

    import httpx

    pool = make_pool(tmp_path / "pool")
    data = split_data(tmp_path / "data")
    port = free_port()
    script = (f"import sys, uvicorn; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_label_page import *; "
              f"session = Labelling({pool!r}, LabelStore({str(data)!r}), features_of); "
              f"uvicorn.run(create_label_app(session, LabelSettings()), port={port})")
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        answered = []
        for answer in ("red", SKIP, NOT_ANY, "blue"):
            item = httpx.get(f"http://127.0.0.1:{port}/api/next").json()[0]
            done = httpx.post(f"http://127.0.0.1:{port}/api/answer",
                              json={"id": item["id"], "answer": answer}).json()
            answered.append(done["path"])
        server.send_signal(signal.SIGKILL)  # no shutdown, no flush: what was answered is written
        server.wait(timeout=10)
    finally:
        server.kill()
    assert len(list((data / "train").rglob("*.png"))) == 2
    labelling, client = start(pool, data)
    assert client.get("/api/state").json()["remaining"] == len(pool) - 4
    shown = {labelling.paths[i["id"]] for i in client.get("/api/next?count=50").json()}
    assert shown and not shown & set(answered)
    # No temporary file left behind: the journal is the one hidden file.
    assert [p.name for p in data.rglob(".*")] == [JOURNAL]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"),
                    reason="needs Debian's chromium and chromium-driver packages")
def test_the_page_labels_images_by_keyboard_in_headless_chromium(tmp_path):
    pytest.importorskip("selenium", reason="needs the selenium package")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pool = make_pool(tmp_path / "pool", per_class=6)
    data = split_data(tmp_path / "data")
    port = free_port()
    labelling = Labelling(pool, LabelStore(data), features_of, every=3)
    app = create_label_app(labelling, LabelSettings(port=port, every=3))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver")))
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)
        body = browser.find_element(By.TAG_NAME, "body")
        keys = class_keys(labelling.classes)
        for count in range(1, 4):  # each image answered by its class's letter key
            wait.until(lambda b: b.find_element(By.ID, "image").get_attribute("data-id"))
            name = browser.find_element(By.ID, "name").text
            body.send_keys(keys[name.split("-")[0]][-1])
            wait.until(lambda b, count=count: b.find_element(By.TAG_NAME, "body").get_attribute(
                "data-answered") == str(count))
        body.send_keys(Keys.SPACE)  # skip
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute(
            "data-answered") == "4")
        # The retraining after 3 answers shows its accuracy, and the guess is pre-selected:
        # Enter accepts it.
        wait.until(lambda b: "%" in b.find_element(By.ID, "history").text)
        wait.until(lambda b: "guess" in b.find_element(By.ID, "guess").text)
        guess = browser.find_element(By.CSS_SELECTOR, "#answers button.selected")
        name = browser.find_element(By.ID, "name").text
        assert guess.get_attribute("data-answer") == name.split("-")[0]
        assert ACCEPT_KEY == "Enter"
        body.send_keys(Keys.ENTER)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute(
            "data-answered") == "5")
        copies = sorted(p.name for p in (data / "train").rglob("*.png"))
        assert len(copies) == 4 and name in copies
        assert all(p.parent.name == p.name.split("-")[0] for p in (data / "train").rglob("*.png"))
        # The file shown deleted meanwhile: one line on the page, and the next image.
        shown = browser.find_element(By.ID, "image").get_attribute("data-id")
        os.remove(labelling.paths[int(shown)])
        body.send_keys(Keys.ENTER)
        wait.until(lambda b: "not there any more" in b.find_element(By.ID, "error").text)
        wait.until(lambda b: b.find_element(By.ID, "image").get_attribute("data-id") != shown
                   and b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "0")
        # A click, then space: two answers, not three (a clicked button keeps no focus for
        # the key to press it again).
        name = browser.find_element(By.ID, "name").text
        browser.find_element(By.CSS_SELECTOR,
                             f"#answers button[data-answer='{name.split('-')[0]}']").click()
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute(
            "data-answered") == "6")
        body.send_keys(Keys.SPACE)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute(
            "data-answered") == "7")
        time.sleep(0.5)
        assert len(labelling.answers) == 7 and (data / "train" / name.split("-")[0] / name).exists()
        browser.save_screenshot(str(tmp_path / "label.png"))
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("reserved", [SKIP, NOT_ANY])
def test_a_class_named_as_an_answer_that_is_not_one_is_refused_before_any_write(tmp_path,
                                                                                reserved):
    # The page's "not any class" (or "skip") would otherwise copy the image into that class.
    pool = make_pool(tmp_path / "pool", per_class=2)
    data = split_data(tmp_path / "data")
    (data / "train" / reserved).mkdir()
    with pytest.raises(DataError, match=f"'{reserved}'") as error:
        start(pool, data)
    assert "\n" not in str(error.value) and "rename" in str(error.value)
    with pytest.raises(DataError, match=f"'{reserved}'"):
        start(pool, tmp_path / "new", classes=["red", reserved])
    assert not (data / JOURNAL).exists() and not list((data / "train").rglob("*.png"))


def test_an_id_must_be_a_number_not_a_boolean(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=2)
    data = split_data(tmp_path / "data")
    _, client = start(pool, data)
    refused = client.post("/api/answer", json={"id": True, "answer": "red"})
    assert refused.status_code == 422, refused.text
    assert not list((data / "train").rglob("*.png"))


def test_a_pool_of_which_no_image_can_be_read_is_refused_in_one_line(tmp_path):
    pool = make_pool(tmp_path / "pool", per_class=2)

    def unreadable(paths, classes):  # as pool_features returns a pool of damaged files
        return PoolFeatures([], np.zeros((0, 64), np.float32),
                            [(path, "not an image") for path in paths], list(classes))

    with pytest.raises(DataError, match="none of the 4 new images of the pool") as error:
        Labelling(pool, LabelStore(tmp_path / "data"), unreadable, ["red", "blue"])
    assert "\n" not in str(error.value) and "not an image" in str(error.value)


@pytest.mark.parametrize("name", ["../escaped", "_hidden", ".dot", "a/b", "a\\b"])
def test_a_class_name_that_is_no_folder_name_is_refused(name):
    # --classes "red,../x" would copy answers out of DATA; "_x" and ".x" into folders that
    # DATA's reader skips.
    with pytest.raises(UsageError, match=re.escape(repr(name))) as error:
        class_list(f"red,{name}")
    assert "\n" not in str(error.value)


def test_each_file_is_scanned_once_a_start_and_the_journal_names_it_by_the_scan_digest(
        tmp_path, monkeypatch):
    """One digest kind in the package (the data check's, cached with its scan): a start reads
    each pool and DATA file at most once to know it, a restart none (the scan's cache)."""
    pool = make_pool(tmp_path / "pool", per_class=3)
    data = split_data(tmp_path / "data")
    scans = []
    scan_file = check.scan_file
    monkeypatch.setattr(check, "scan_file", lambda path: scans.append(path) or scan_file(path))
    labelling, client = start(pool, data)
    assert sorted(scans) == sorted(set(scans)) and set(pool) <= set(scans)  # each read once
    assert {str(p) for p in (data / "val").rglob("*.png")} <= set(scans)
    _, written = answer_next(client)
    expected = hashlib.new(check.DIGEST, Path(written["path"]).read_bytes()).hexdigest()
    assert written["digest"] == expected
    assert json.loads((data / JOURNAL).read_text().splitlines()[0])["digest"] == expected
    scans.clear()
    labelling, client = start(pool, data)  # resumes: the answered image is not shown again
    assert scans == [str(next((data / "train").rglob("*.png")))]  # only the new copy is read
    assert client.get("/api/state").json()["remaining"] == len(pool) - 1


def test_data_s_images_are_those_its_reader_sees(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(3)
    for folder in ("red", "blue", "red/nested", "_hidden", "red/.dot"):
        (data / folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            make_image(rng, COLORS["red"], 32).save(data / folder / f"{i}.png")
    dataset = find_dataset(data)
    read = {p for split in dataset.splits.values() for p in split.paths}
    assert {item.path for item in LabelStore(data).labelled()} == read
    assert LabelStore(data).classes() == dataset.class_names


@pytest.mark.parametrize("name", ["../escaped", "_hidden", ".dot", "a/b", "a\\b"])
def test_a_model_s_class_that_is_no_folder_name_is_refused_before_any_write(tmp_path, name):
    # A run trained on a table may have such a class: its answers would be copied out of
    # DATA, or into a folder DATA's reader skips. A table takes any name.
    pool = make_pool(tmp_path / "pool", per_class=2)
    data = split_data(tmp_path / "data")

    def model_features(paths, classes, scan_root=None):
        return PoolFeatures(**{**vars(features_of(paths, ["red", name])),
                               "probabilities": np.full((len(paths), 2), 0.5, np.float32)})

    with pytest.raises(DataError, match=re.escape(repr(name))) as error:
        Labelling(pool, LabelStore(data), model_features, model="runs/x")
    assert "\n" not in str(error.value) and "--table" in str(error.value)
    assert not (data / JOURNAL).exists() and not list((data / "train").rglob("*.png"))
    table = tmp_path / "labels.csv"
    labelling = Labelling(pool, LabelStore(tmp_path, table), model_features, model="runs/x")
    client = TestClient(create_label_app(labelling, LabelSettings()))
    answer_next(client, name)
    assert read_table(table, tmp_path).rows[0][2] == name


def test_the_command_passes_its_strategy_to_the_session(tmp_path, monkeypatch):
    from smallcnn.serve import labelling

    given = {}
    monkeypatch.setattr(labelling, "label", lambda *args, settings, **kw: given.update(
        strategy=settings.strategy))
    make_pool(tmp_path / "pool", per_class=1)
    for strategy in STRATEGIES:
        result = invoke("label", tmp_path / "pool", "--data", tmp_path / "data",
                        "--strategy", strategy)
        assert result.exit_code == 0 and given["strategy"] == strategy, result.output
