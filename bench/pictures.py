"""How long DeepDream and style transfer take: the two commands of the README, each in a
fresh process (TensorFlow's import and the base's build included), --rounds times.

  dream   smallcnn visualize dream PHOTO (512 px, 3 octaves of 20 steps, mobilenet_v2)
  style   smallcnn visualize style PHOTO PAINTING (384 px, 300 steps, mobilenet_v2)

PHOTO is a bee from the bundled sample, PAINTING the Van Gogh in docs/images. Records wall
seconds and peak memory (/usr/bin/time) and what the command printed at its end (the
objective, the losses). Results: bench/results/pictures.json; bench/report.py puts the table
in docs/benchmarks.md.

--compare instead renders the same pair side by side, in one process, for MobileNetV2 and
EfficientNet-B0: before (the settings before issue 28), with SWAG's smoothing and after
(today's defaults), at the command's size and steps, into docs/images/style_compare.png
(a 256-colour PNG, to stay small), and records each picture's seconds.

    .venv/bin/python bench/pictures.py [--rounds 2] [--compare]
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_results, save_results, smallcnn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pictures.json"
PHOTO = ROOT / "datasets" / "ants-bees" / "val" / "bees" / "10870992_eebeeb3a12.jpg"
PAINTING = ROOT / "docs" / "images" / "van-gogh-village-street-in-auvers-1890.jpg"
COMMANDS = {
    "dream": ["visualize", "dream", PHOTO],
    "style": ["visualize", "style", PHOTO, PAINTING],
}
TARGET_SECONDS = 120  # issue 18: each under 2 minutes on this machine
COMPARE_PNG = ROOT / "docs" / "images" / "style_compare.png"
COMPARE_BASES = ("mobilenet_v2", "efficientnet_b0")
# The style layers before issue 28 where they changed: MobileNetV2's ReLU6 outputs.
BEFORE_LAYERS = {"mobilenet_v2": ("Conv1_relu", "block_1_expand_relu", "block_3_expand_relu",
                                  "block_6_expand_relu", "block_13_expand_relu")}
SWAG_SMOOTHING = 1.0  # the paper's temperature 1, on each layer's spread (style.SMOOTHING)


def measure(command, work):
    run = smallcnn(*COMMANDS[command], "--out", work / f"{command}.png")
    return {"command": command, "wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"],
            "printed": run["output"].strip().splitlines()[-1]}


def compare():
    """Renders COMPARE_PNG; returns each picture's base, setting, seconds and losses."""
    from PIL import Image

    from smallcnn.model.bases import get_base
    from smallcnn.runtime.plots import grid_figure, save_figure
    from smallcnn.visualize.common import open_backbone, picture_of
    from smallcnn.visualize.style import StyleSettings, StyleTransfer

    settings = StyleSettings()
    content, style = picture_of(PHOTO, settings.size), picture_of(PAINTING, settings.size)
    tiles, titles, cells = [], [], []
    for base in COMPARE_BASES:
        backbone = open_backbone(base=base)
        before = BEFORE_LAYERS.get(base, get_base(base).style_layers)
        after = get_base(base).style_layers
        variants = [("before", before, 0.0), (f"SWAG (smoothing {SWAG_SMOOTHING:g})", before,
                                              SWAG_SMOOTHING), ("after (default)", after, 0.0)]
        for name, layers, smoothing in variants:
            if name.startswith("after") and tuple(after) == tuple(before):
                tiles.append(tiles[-2])
                titles.append(f"{base}: after = before (unchanged)")
                continue
            transfer = StyleTransfer(backbone, style_layers=list(layers))
            start = time.perf_counter()
            styled = transfer(content, style, dataclasses.replace(settings, smoothing=smoothing))
            seconds = time.perf_counter() - start
            cells.append({"base": base, "setting": name, "layers": list(layers),
                          "seconds": round(seconds, 1),
                          **{k: round(v, 4) for k, v in styled.final.items()}})
            print(json.dumps(cells[-1]), flush=True)
            tiles.append(styled.image)
            titles.append(f"{base}: {name}")
    save_figure(grid_figure(tiles, titles, columns=3, tile_inches=2.8), COMPARE_PNG)
    Image.open(COMPARE_PNG).convert("RGB").quantize(256).save(COMPARE_PNG, optimize=True)
    return cells


def load():
    return load_results(RESULTS)


def summary(results):
    if not results:
        return []
    lines = ["## DeepDream and style transfer", "",
             f"bench/pictures.py ({results['date']}, {results['rounds']} round(s)): the "
             "README's two commands, each in a fresh process (TensorFlow's import and the "
             "base's build included), defaults (mobilenet_v2: no VGG19 weights cached "
             f"here); target under {TARGET_SECONDS} s each.", "",
             "| command | wall s (median) | every round | peak MB | printed at the end |",
             "|---|---|---|---|---|"]
    for command, args in COMMANDS.items():
        cells = [c for c in results.get("runs", []) if c["command"] == command]
        if not cells:
            continue
        walls = [c["wall_seconds"] for c in cells]
        shown = " ".join(str(a.relative_to(ROOT)) if isinstance(a, Path) else a for a in args)
        lines.append(f"| `smallcnn {shown}` | {statistics.median(walls):.1f} | "
                     f"{', '.join(f'{w:.1f}' for w in walls)} | "
                     f"{max(c['peak_mb'] for c in cells):.0f} | {cells[-1]['printed']} |")
    return lines + [""] + compare_summary(results.get("compare"))


def compare_summary(cells):
    if not cells:
        return []
    lines = [f"Style transfer side by side (`bench/pictures.py --compare`, "
             f"{cells[0].get('date', '')}; docs/images/style_compare.png): the same pair at the "
             "command's size and steps, in one process; seconds per picture, the base built.", "",
             "| base | setting | seconds | content | style | variation |", "|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['base']} | {c['setting']} | {c['seconds']:.1f} | {c['content']:.3g} | "
                     f"{c['style']:.3g} | {c['variation']:.3g} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="render style_compare.png")
    args = parser.parse_args()
    if args.compare:
        results = load()
        cells = compare()
        for cell in cells:
            cell["date"] = time.strftime("%Y-%m-%d")
        save_results(RESULTS, {**results, "compare": cells}, summary)
        return
    results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "runs": [],
               "compare": load().get("compare")}
    with tempfile.TemporaryDirectory(prefix="smallcnn-pictures-") as work:
        for _ in range(args.rounds):
            for command in COMMANDS:
                cell = measure(command, Path(work))
                results["runs"].append(cell)
                print(json.dumps(cell), flush=True)
    save_results(RESULTS, results, summary)


if __name__ == "__main__":
    main()
