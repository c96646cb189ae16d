"""Labels from a CSV table: every command that takes DATA takes one; bad tables get one
line that names the row."""

import csv
import json

import pytest
from conftest import invoke, make_dataset

from smallcnn.data.dataset import find_dataset
from smallcnn.errors import DataError, UsageError
from smallcnn.data.table import TableOptions, read_table


@pytest.fixture
def flat(tmp_path):
    """Images in one folder, their classes only in a table: (folder, {file name: class})."""
    folders = make_dataset(tmp_path / "made", per_class=10, size=32, splits=())
    images = tmp_path / "images"
    images.mkdir()
    labels = {}
    for path in sorted(folders.rglob("*.png")):
        target = images / f"img_{len(labels):03d}.png"
        path.rename(target)
        labels[target.name] = path.parent.name
    return images, labels


def write(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_a_table_with_splits_and_one_without(flat, tmp_path):
    images, labels = flat
    names = sorted(labels)
    rows = ["filename,label,split"] + [
        f"images/{n},{labels[n]},{'validation' if i % 4 == 0 else 'train'}"
        for i, n in enumerate(names)]
    dataset = find_dataset(write(tmp_path / "labels.csv", rows))
    assert dataset.class_names == ["blue", "red"] and dataset.layout == "csv table"
    assert dataset.data == str(tmp_path / "labels.csv") and dataset.root == str(tmp_path)
    val = {p.split("/")[-1] for p in dataset.val.paths}
    assert val == {n for i, n in enumerate(names) if i % 4 == 0}
    for split in dataset.splits.values():
        for path, label in zip(split.paths, split.labels):
            assert dataset.class_names[label] == labels[path.split("/")[-1]]

    # No split column: validation drawn per class, as for class folders; other names,
    # semicolons, a byte-order mark, file names relative to --images.
    rows = ["Image;Category"] + [f"{n};{labels[n]}" for n in names]
    table = write(tmp_path / "other.csv", rows, encoding="utf-8-sig")
    drawn = find_dataset(table, val_split=0.2, table=TableOptions(images=str(images)))
    assert len(drawn.val) == 4 and len(drawn.train) == 16 and drawn.val_split == 0.2
    # Tab-separated, columns named on the command line, beside the image folder (--labels).
    rows = ["name\tkind"] + [f"{n}\t{labels[n]}" for n in names]
    tsv = write(tmp_path / "kinds.tsv", rows)
    beside = find_dataset(images, table=TableOptions(labels=str(tsv), path_column="name",
                                                     label_column="kind"))
    assert beside.data == str(images) and sorted(beside.class_names) == ["blue", "red"]


@pytest.mark.parametrize("rows, expected", [
    (["filename,label", "img_000.png,red", "missing.png,red"],
     "Row 3 of '{table}': no file 'missing.png' in"),
    (["filename,label", "img_000.png,"], "Row 2 of '{table}' has an empty label for 'img_000.png'"),
    (["filename,label,split", "img_000.png,red,holdout"],
     "Row 2 of '{table}' has the unknown split 'holdout' for 'img_000.png'"),
    (["filename,label", "img_000.png,red", "img_001.png,red", "img_000.png,blue"],
     "Rows 2 and 4 of '{table}' give 'img_000.png' two labels ('red' and 'blue')"),
    (["filename,label", "img_000.png,red", "img_000.png,red"],
     "Rows 2 and 3 of '{table}' both list 'img_000.png'"),
    (["filename,label", "img_000.png,red|blue"], "multi-label data is not supported yet"),
    (["file_name,tag", "img_000.png,red"],
     "'{table}' has no path column (looked for filename, file, path, image, id; its columns: "
     "file_name, tag). Name it with --path-column."),
    (["filename|label", "img_000.png|red"],
     "It has one column, 'filename|label': is its delimiter one of comma, semicolon or tab?"),
])
def test_a_bad_table_is_refused_naming_the_row(flat, rows, expected):
    images, _ = flat
    table = write(images / "labels.csv", rows)
    with pytest.raises(DataError) as caught:
        find_dataset(table)
    assert expected.format(table=table) in str(caught.value)


def test_an_encoding_that_is_not_utf8_is_named(flat):
    images, labels = flat
    table = write(images / "labels.csv", ["filename,label", "img_000.png,rouge café"],
                  encoding="latin-1")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 0xe9 on line 2\); save it "
                                        r"as UTF-8"):
        find_dataset(table)
    with pytest.raises(UsageError, match="--label-column 'kind' is not a column"):
        find_dataset(write(images / "ok.csv", ["filename,label", "img_000.png,red"]),
                     table=TableOptions(label_column="kind"))


def test_check_extract_and_evaluate_take_a_table(flat, tmp_path):
    images, labels = flat
    names = sorted(labels)
    rows = ["path,class,set"] + [
        f"{n},{labels[n]},{['train', 'train', 'val', 'test'][i % 4]}" for i, n in enumerate(names)]
    table = write(images / "labels.csv", rows)

    checked = invoke("check", table, "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["class_names"] == ["blue", "red"] and report["layout"] == "csv table"

    result = invoke("extract", table, "--base", "small", "--image-size", "32", "--epochs", "5",
                    "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "smallcnn.json").read_text())
    assert config["data"] == str(table)
    evaluated = invoke("evaluate", tmp_path / "run", "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert sum(json.loads(evaluated.stdout)["confusion_matrix"][0]) + \
        sum(json.loads(evaluated.stdout)["confusion_matrix"][1]) == 5

    # --labels beside the folder, recorded in the run (absolute), so evaluate finds it.
    (images / "labels.csv").rename(tmp_path / "elsewhere.csv")
    result = invoke("extract", images, "--labels", tmp_path / "elsewhere.csv", "--base", "small",
                    "--image-size", "32", "--epochs", "5", "--out", tmp_path / "run2")
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run2" / "smallcnn.json").read_text())["settings"]
    assert settings["labels"] == str(tmp_path / "elsewhere.csv")
    assert invoke("evaluate", tmp_path / "run2").exit_code == 0

    missing = invoke("check", images, "--labels", tmp_path / "nope.csv")
    assert missing.exit_code == DataError.exit_code and "nope.csv" in missing.output


def test_a_quoted_cell_may_hold_a_line_break(flat, tmp_path):
    images, labels = flat
    names = sorted(labels)
    odd = images / "two\nlines.png"  # a file name may hold a line break, quoted in CSV
    (images / names[0]).rename(odd)
    labels[odd.name] = labels.pop(names[0])
    notes = ["a note\non two lines", "a form\x0cfeed", "a line\u2028separator", "plain"]
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=";")  # the delimiter is still found
        writer.writerow(["filename", "note", "label"])
        writer.writerows([n, notes[i % len(notes)], labels[n]]
                         for i, n in enumerate(sorted(labels)))
    table = read_table(tmp_path / "labels.csv", images)
    assert [file for _, file, _, _ in table.rows] == [str(images / n) for n in sorted(labels)]
    assert [number for number, _, _, _ in table.rows] == list(range(2, len(labels) + 2))
    assert {label for _, _, label, _ in table.rows} == {"red", "blue"}


def test_a_quote_left_open_or_a_huge_cell_is_refused_naming_the_row(flat):
    images, _ = flat
    table = write(images / "labels.csv", ["filename,label", 'img_000.png,"red', "img_001.png,blue"])
    with pytest.raises(DataError, match=f"Row 2 of {str(table)!r} gives 'img_000.png' a label "
                                        "that runs over several lines .*a quote left open"):
        find_dataset(table)
    table = write(images / "labels.csv", ["filename,label", "img_000.png,red",
                                          'img_001.png,"' + "x" * (csv.field_size_limit() + 1)])
    with pytest.raises(DataError, match=f"Row 3 of {str(table)!r} cannot be read as CSV"):
        find_dataset(table)


def test_a_name_leading_out_of_the_images_folder_is_refused_naming_the_row(flat, tmp_path):
    images, labels = flat
    name = sorted(labels)[0]
    outside = tmp_path / "outside.png"
    outside.write_bytes((images / name).read_bytes())
    for listed in ("../outside.png", f"{name}/../../outside.png"):
        table = write(images / "labels.csv", ["filename,label", f"{name},red", f"{listed},red"])
        with pytest.raises(DataError, match=f"Row 3 of {str(table)!r} names {listed!r}, outside "
                                            f"the images folder {str(images)!r}; name it from "
                                            "inside that folder or by an absolute name"):
            read_table(table)
    # What would work: an absolute name (Keras' convention), or an images folder above.
    table = write(images / "labels.csv", ["filename,label", f"{name},red", f"{outside},blue"])
    assert [row[1] for row in read_table(table).rows] == [str(images / name), str(outside)]
    table = write(images / "labels.csv", ["filename,label", f"images/{name},red",
                                          "outside.png,blue"])
    assert len(read_table(table, images=tmp_path).rows) == 2
