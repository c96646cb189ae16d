"""predict --jsonl: a line per image as it goes, resumable, and --list files."""

import json

from conftest import invoke


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_streams_resumes_and_matches_json(trained, tmp_path, monkeypatch):
    from smallcnn.predict import Classifier

    run, data = trained
    monkeypatch.setattr(Classifier, "chunk_images", 4)  # several chunks, each flushed
    images = sorted(str(p) for p in (data / "val").rglob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "predictions.jsonl"

    result = invoke("predict", data / "val", broken, "--model", run, "--jsonl", out)
    assert result.exit_code == 0, result.output
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
    assert resumed.exit_code == 0, resumed.output
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
