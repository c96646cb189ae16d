"""Damaged data: does smallcnn train as well on a messy copy of ants-bees as on the clean one?

Makes a copy of ../shared/datasets/ants-bees with 20 planted problems:
  8 unreadable files added (empty, truncated, HTML named .jpg, random bytes, a PNG
    signature alone, a 20,000 x 20,000 header, a zero-byte PNG, a text file named .jpeg),
  10 images re-encoded in place in odd but readable ways (CMYK JPEG, PNG named .jpg,
    EXIF-rotated JPEG, palette PNG with transparency, RGBA PNG, BMP, WebP, animated GIF,
    16-bit grey PNG, grey JPEG; the last two in train only, since they drop colour),
  2 validation images copied into train (cross-split duplicates),
then runs `smallcnn check` on it and `smallcnn train --freeze` on both copies.

    .venv/bin/python bench/damaged.py [--epochs N]
"""

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "ants-bees"
sys.path.insert(0, str(ROOT))
from tools.corpus import png_claiming  # noqa: E402


def plant(data):
    """Plants the problems; returns (unreadable paths, duplicate pairs)."""
    rng = np.random.default_rng(0)
    bad = {
        "train/ants/empty.jpg": b"",
        "train/bees/truncated.jpg": (data / "train/bees").glob("*.jpg").__next__().read_bytes()[:3000],
        "val/ants/download.jpg": b"<!doctype html><html><body>403 Forbidden</body></html>",
        "val/bees/noise.png": rng.bytes(5000),
        "train/ants/signature.png": b"\x89PNG\r\n\x1a\n",
        "train/bees/huge-scan.png": png_claiming(20_000, 20_000),
        "val/ants/zero.png": b"",
        "val/bees/notes.jpeg": b"field notes, not a photo\n",
    }
    for rel, content in bad.items():
        (data / rel).write_bytes(content)

    def photos(split, cls):
        return sorted((data / split / cls).glob("*.jpg"))

    def replace(path, suffix, save):
        image = Image.open(path).convert("RGB")
        path.unlink()
        target = path.with_suffix(suffix)
        save(image, target)

    val_ants, val_bees = photos("val", "ants"), photos("val", "bees")
    train_ants, train_bees = photos("train", "ants"), photos("train", "bees")

    def exif_rotated(image, target):
        stored = image.transpose(Image.Transpose.ROTATE_90)  # displayed upright via EXIF 6
        exif = stored.getexif()
        exif[0x0112] = 6
        stored.save(target, "JPEG", exif=exif, quality=92)

    def animated(image, target):
        image.save(target, "GIF", save_all=True, append_images=[image.rotate(90)])

    def palette(image, target):
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(target, "PNG", transparency=0)

    def png_named_jpg(image, target):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        target.write_bytes(buffer.getvalue())

    def sixteen_bit(image, target):
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(target, "PNG")

    odd = [
        (val_ants[1], ".jpg", lambda im, t: im.convert("CMYK").save(t, "JPEG", quality=92)),
        (val_bees[1], ".jpg", png_named_jpg),
        (val_ants[2], ".jpg", exif_rotated),
        (val_bees[2], ".png", palette),
        (val_ants[3], ".png", lambda im, t: im.convert("RGBA").save(t, "PNG")),
        (val_bees[3], ".bmp", lambda im, t: im.save(t, "BMP")),
        (train_ants[1], ".webp", lambda im, t: im.save(t, "WEBP", quality=90)),
        (train_bees[1], ".gif", animated),
        (train_ants[2], ".png", sixteen_bit),
        (train_bees[2], ".jpg", lambda im, t: im.convert("L").save(t, "JPEG", quality=92)),
    ]
    for path, suffix, save in odd:
        replace(path, suffix, save)

    duplicates = []
    for source in (val_ants[10], val_bees[10]):
        copy = data / "train" / source.parent.name / f"copy-of-{source.name}"
        shutil.copy(source, copy)
        duplicates.append((str(copy), str(source)))
    return [str(data / rel) for rel in bad], duplicates


def smallcnn(*args, cwd):
    command = [sys.executable, "-m", "smallcnn", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smallcnn-damaged-"))
    clean, damaged = work / "clean", work / "damaged"
    shutil.copytree(SOURCE, clean)
    shutil.copytree(SOURCE, damaged)
    unreadable, duplicates = plant(damaged)

    check = smallcnn("check", damaged, "--json", cwd=work)
    report = json.loads(check.stdout)
    found = {u["path"] for u in report["unreadable"]}
    leaks = {tuple(sorted((d["a"], d["b"]))) for d in report["duplicates"]
             if d["split_a"] != d["split_b"]}
    planted = {tuple(sorted(pair)) for pair in duplicates}
    print(f"check: exit {check.returncode}; unreadable named {len(found & set(unreadable))}/"
          f"{len(unreadable)} (extra: {len(found - set(unreadable))}); planted cross-split "
          f"duplicates found {len(planted & leaks)}/{len(planted)} (other cross-split pairs: "
          f"{len(leaks - planted)})")

    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    accuracy = {}
    for name, data in (("clean", clean), ("damaged", damaged)):
        result = smallcnn("train", "--freeze", data, *epochs, "--out", work / f"run-{name}", cwd=work)
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:])
            raise SystemExit(f"train on the {name} copy failed: exit {result.returncode}")
        metrics = json.loads((work / f"run-{name}" / "metrics.json").read_text())
        accuracy[name] = metrics["val_accuracy"]
        print(f"train --freeze on the {name} copy: val_accuracy {metrics['val_accuracy']:.2%}, "
              f"skipped {metrics['skipped_images']} unreadable, {metrics['seconds']:.0f} s")
    gap = (accuracy["clean"] - accuracy["damaged"]) * 100
    print(f"difference: {gap:+.2f} points (must be within 1)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
