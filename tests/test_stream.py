"""predict --jsonl: a line per image as it goes, resumable, and --list files."""

import json

import pytest
from conftest import invoke


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_streams_resumes_and_matches_json(trained, tmp_path, monkeypatch):
    from smallcnn.data.images import UnreadableImage
    from smallcnn.inference.predict import Classifier

    run, data = trained
    monkeypatch.setattr(Classifier, "chunk_images", 4)  # several chunks, each flushed
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "predictions.jsonl"

    result = invoke("predict", data / "val", broken, "--model", run, "--jsonl", out)
    assert result.exit_code == UnreadableImage.exit_code, result.output
    written = lines(out)
    assert sorted(line["path"] for line in written) == sorted(images + [str(broken)])
    [error] = [line for line in written if "error" in line]
    assert error["path"] == str(broken) and "not an image" in error["error"]
    expected = json.loads(invoke("predict", data / "val", "--model", run, "--json").stdout)
    by_path = {line["path"]: line for line in written}
    for prediction in expected:
        got = by_path[prediction["path"]]
        assert got["label"] == prediction["label"]
        assert abs(got["probability"] - prediction["probability"]) < 1e-3
    assert f"{len(images)} predicted, 1 unreadable" in result.output

    again = invoke("predict", data / "val", broken, "--model", run, "--jsonl", out)
    assert again.exit_code == 0 and f"0 predicted, 0 unreadable (error lines), " \
        f"{len(images) + 1} already there" in again.output
    assert len(lines(out)) == len(images) + 1

    # An interruption left half a line: it is cut off, and that image predicted again.
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:5]) + text[5][:20])
    resumed = invoke("predict", data / "val", broken, "--model", run, "--jsonl", out)
    assert resumed.exit_code == UnreadableImage.exit_code, resumed.output  # its line was cut
    final = lines(out)
    assert sorted(line["path"] for line in final) == sorted(images + [str(broken)])


def test_a_list_file_names_the_images(trained, tmp_path):
    run, data = trained
    images = sorted(str(p) for p in (data / "val" / "blue").iterdir())[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("# three blue ones\n" + "\n".join(images) + "\n\n")
    result = invoke("predict", "--list", listing, "--model", run, "--json")
    assert result.exit_code == 0, result.output
    assert [p["path"] for p in json.loads(result.stdout)] == images
    assert all(p["label"] == "blue" for p in json.loads(result.stdout))
    nothing = invoke("predict", "--model", run)
    assert nothing.exit_code == 2 and "No images" in nothing.output


def checksum(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def a_few_lines(run, data, tmp_path, count=3):
    """A --jsonl file of `count` predictions, as an earlier run wrote it: (file, images)."""
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))[:count]
    out = tmp_path / "earlier.jsonl"
    result = invoke("predict", *images, "--model", run, "--jsonl", out)
    assert result.exit_code == 0, result.output
    return out, images


def assert_refused(result, path, before, *words):
    """Refused in one line naming what is wrong, with `path` byte for byte as it was."""
    from smallcnn.errors import UsageError

    assert result.exit_code == UsageError.exit_code, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert all(word in message for word in words), result.output
    assert checksum(path) == before


def test_a_file_of_something_else_is_refused_and_left_as_it_was(trained, tmp_path):
    run, data = trained
    out, images = a_few_lines(run, data, tmp_path)
    predictions = lines(out)
    others = {
        "document.json": json.dumps(predictions, indent=2) + "\n",  # pretty-printed
        "table.csv": "path,label\n" + "".join(f"{p},red\n" for p in images),
        "list.txt": "\n".join(images) + "\n",
        "other.jsonl": "".join(json.dumps({"path": p, "score": 1}) + "\n" for p in images),
        "nested.jsonl": "[" * 100_000 + "\n",
        "binary.jsonl": bytes(range(256)) * 64,
    }
    for name, content in others.items():
        other = tmp_path / name
        (other.write_bytes if isinstance(content, bytes) else other.write_text)(content)
        before = checksum(other)
        result = invoke("predict", data / "val", "--model", run, "--jsonl", other)
        assert_refused(result, other, before, str(other), "not", "predict --jsonl")


def test_a_damaged_line_is_refused_by_its_number(trained, tmp_path):
    run, data = trained
    out, _ = a_few_lines(run, data, tmp_path)
    text = out.read_text().splitlines(keepends=True)
    damaged = [
        text[0] + text[1][:30] + "\n" + text[2],  # line 2 cut short, then a whole line
        text[0] + "\n" + text[1] + text[2],  # a blank line 2
        text[0] + text[1] + text[2] + '{"path": "x.png", "note": "mine"}',  # no end of line
        text[0] + text[1] + text[2] + "tail",
        text[0] + text[1] + text[2] + "\0" * 40,  # what a crash (not a kill) may leave
    ]
    for index, content in enumerate(damaged):
        out.write_text(content)
        before = checksum(out)
        result = invoke("predict", data / "val", "--model", run, "--jsonl", out)
        line = 2 if index < 2 else 4
        assert_refused(result, out, before, f"line {line}", str(out))


def test_only_a_line_a_killed_run_half_wrote_is_cut(trained, tmp_path):
    run, data = trained
    out, images = a_few_lines(run, data, tmp_path)
    whole = out.read_text()
    last = json.dumps({"path": str(data / "val" / "x.png"), "error": "e"})
    for fragment in (last[:3], last[:12], last[:-1], last):  # any prefix of a line
        out.write_text(whole + fragment)
        result = invoke("predict", *images, "--model", run, "--jsonl", out)
        assert result.exit_code == 0, result.output
        assert "0 predicted" in result.output and out.read_text() == whole


def test_a_file_from_another_model_is_refused(trained, tmp_path):
    run, data = trained
    out, _ = a_few_lines(run, data, tmp_path)
    text = out.read_text().replace('"label": "red"', '"label": "cat"')
    text = text.replace('"label": "green"', '"label": "cat"').replace('"label": "blue"',
                                                                      '"label": "cat"')
    out.write_text(text)
    before = checksum(out)
    result = invoke("predict", data / "val", "--model", run, "--jsonl", out)
    assert_refused(result, out, before, "cat", str(out))


def test_the_list_or_an_image_as_the_output_is_refused(trained, tmp_path):
    run, data = trained
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))[:2]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(images) + "\n")
    link = tmp_path / "link.txt"
    link.symlink_to(listing)
    empty = tmp_path / "empty.txt"  # no lines: no content that could tell it apart
    empty.write_text("")
    for listed, out in ((listing, listing), (link, listing), (listing, link), (empty, empty)):
        before = checksum(out)
        result = invoke("predict", images[0], "--list", listed, "--model", run, "--jsonl", out)
        assert_refused(result, out, before, "--list", "--jsonl")
    image = tmp_path / "image.png"
    image.write_bytes((data / "val" / "red" / "red_000.png").read_bytes())
    before = checksum(image)
    result = invoke("predict", image, "--model", run, "--jsonl", f"./{image.name}")
    assert_refused(result, image, before, "image", "--jsonl")


def test_a_folder_is_refused_and_a_missing_folder_made(trained, tmp_path):
    run, data = trained
    image = data / "val" / "red" / "red_000.png"
    folder = tmp_path / "out"
    folder.mkdir()
    result = invoke("predict", image, "--model", run, "--jsonl", folder)
    from smallcnn.errors import UsageError

    assert result.exit_code == UsageError.exit_code and "folder" in result.output
    assert list(folder.iterdir()) == []
    out = tmp_path / "new" / "deeper" / "predictions.jsonl"
    result = invoke("predict", image, "--model", run, "--jsonl", out)
    assert result.exit_code == 0, result.output
    assert [line["path"] for line in lines(out)] == [str(image)]


def test_one_image_written_several_ways_is_predicted_once(trained, tmp_path, monkeypatch):
    run, data = trained
    monkeypatch.chdir(data)
    spellings = ["val/red/red_000.png", "./val/red/red_000.png", "val//red/red_000.png",
                 str(data / "val" / "red" / "red_000.png"), "val/blue/../red/red_000.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(spellings + ["val/red/red_001.png"]) + "\n")
    out = tmp_path / "predictions.jsonl"
    result = invoke("predict", *spellings, "--list", listing, "--model", run, "--jsonl", out)
    assert result.exit_code == 0, result.output
    assert [line["path"] for line in lines(out)] == spellings[:1] + ["val/red/red_001.png"]
    json_result = invoke("predict", *spellings, "--model", run, "--json")
    assert [p["path"] for p in json.loads(json_result.stdout)] == spellings[:1]

    # Resumed with other spellings and more images: only the missing ones are predicted.
    more = sorted(str(p.relative_to(data)) for p in (data / "val" / "green").iterdir())
    again = invoke("predict", "./val/red/red_001.png", spellings[3], *more, "--model", run,
                   "--jsonl", out)
    assert again.exit_code == 0, again.output
    assert f"{len(more)} predicted, 0 unreadable (error lines), 2 already there" in again.output
    paths = [line["path"] for line in lines(out)]
    assert paths == spellings[:1] + ["val/red/red_001.png"] + more


def test_a_device_is_written_to_and_never_read(trained):
    run, data = trained
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    result = invoke("predict", *images, "--model", run, "--jsonl", "/dev/null")
    assert result.exit_code == 0, result.output
    assert f"{len(images)} predicted" in result.output


def test_unreadable_images_of_this_run_set_the_exit_code(trained, tmp_path):
    from smallcnn.data.images import UnreadableImage

    run, data = trained
    image = data / "val" / "red" / "red_000.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "predictions.jsonl"
    plain = invoke("predict", image, broken, "--model", run)
    result = invoke("predict", image, broken, "--model", run, "--jsonl", out)
    assert result.exit_code == plain.exit_code == UnreadableImage.exit_code, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "1 unreadable" in result.output and str(out) in " ".join(result.output.split())
    assert [line["path"] for line in lines(out)] == [str(image), str(broken)]

    # The error line was written by an earlier run: this one has nothing left to predict.
    again = invoke("predict", image, broken, "--model", run, "--jsonl", out)
    assert again.exit_code == 0, again.output
    assert "None" not in again.output and "nothing left to predict" in again.output


def test_a_second_run_on_a_file_being_written_is_refused(trained, tmp_path, monkeypatch):
    from conftest import invoke_in_subprocess

    from smallcnn.errors import UsageError
    from smallcnn.inference.predict import Classifier

    run, data = trained
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    out = tmp_path / "predictions.jsonl"
    second = {}
    iter_probabilities = Classifier.iter_probabilities

    def first_chunk_then_a_second_run(self, *args, **kwargs):
        for index, chunk in enumerate(iter_probabilities(self, *args, **kwargs)):
            if index == 1:  # the first chunk is written: another process runs the same command
                second["before"] = checksum(out)
                second["result"] = invoke_in_subprocess(
                    "predict", *images, "--model", run, "--jsonl", out,
                    exit_code=UsageError.exit_code)
                second["after"] = checksum(out)
            yield chunk

    monkeypatch.setattr(Classifier, "chunk_images", 4)
    monkeypatch.setattr(Classifier, "iter_probabilities", first_chunk_then_a_second_run)
    result = invoke("predict", *images, "--model", run, "--jsonl", out)
    assert result.exit_code == 0, result.output
    assert sorted(line["path"] for line in lines(out)) == images  # each image once

    stdout, stderr, imported = second["result"]
    assert second["before"] == second["after"] and imported == []  # refused before the model loads
    assert stderr.count("error:") == 1 and "Traceback" not in stderr
    assert "another run" in " ".join(stderr.split()) and str(out) in " ".join(stderr.split())


def test_two_runs_making_the_same_file_are_kept_apart(tmp_path):
    from smallcnn.errors import UsageError
    from smallcnn.inference.stream import ERROR_KEYS, PredictionsFile

    out = tmp_path / "new.jsonl"
    line = dict(zip(ERROR_KEYS, ("a.png", "unreadable")))
    first, second, third = (PredictionsFile(out) for _ in range(3))  # each finds no file
    with first.appending() as append:  # the first makes it, and holds it while it writes
        append([line])
        with pytest.raises(UsageError, match="another run"), second.appending() as other:
            other([line])
    with pytest.raises(UsageError, match="changed while this run read it"):
        with third.appending() as other:  # the first is done: the file is not as it was read
            other([line])
    assert lines(out) == [line]
