"""How well a run's per-photo exposure gains (model.appearance: exposure) agree with the exposure and white
balance the demo city's appearance variant really applied to each photo (its ground_truth/<scene>.json).

    python tools/appearance_gains.py RUN [--scene SCENE]

Prints, over the trained photos, the correlation of the learned log-gains with the true log(exposure x
white balance) per channel, of the brightness (mean over channels) and of the white balance (each channel
minus the mean), the slope of learned on true brightness, and a JSON line. Both sides are centred, since a
model's gains are known only up to the scene's own brightness.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from momentumgs.model.store import load_model
from momentumgs.run_setup import run_config
from momentumgs.train.paths import RunPaths


def true_log_gains(scene: Path, names: list[str]) -> np.ndarray:
    """log(exposure x white balance) [P, 3] of each photo in `names`, from the demo's ground truth."""
    truth_files = sorted((scene / "ground_truth").glob("*.json"))
    looks = {}
    for path in truth_files:
        for look in json.loads(path.read_text()).get("appearance", []):
            looks[look["name"]] = look
    if not looks:
        raise SystemExit(f"{scene}/ground_truth: no appearance table (not a demo-scene --appearance scene)")
    rows = [looks[Path(name).name] for name in names]
    return np.log([[r["exposure"] * g for g in r["white_balance"]] for r in rows])


def gain_agreement(run: Path, scene: Path | None = None) -> dict:
    model = load_model(RunPaths(run).model)
    if model.spec.appearance_mode != "exposure" or model.decoder.appearance is None:
        raise SystemExit(f"{run}: the model has no exposure gains (model.appearance: exposure)")
    scene = Path(scene or run_config(run).data.path)
    images = model.info["appearance_images"]
    table = model.decoder.appearance.weight.detach().cpu().numpy()
    learned = table[[row["index"] for row in images]]  # [P, 3]
    true = true_log_gains(scene, [row["name"] for row in images])  # [P, 3]
    learned, true = learned - learned.mean(0), true - true.mean(0)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    bright_l, bright_t = learned.mean(1), true.mean(1)
    return {
        "photos": len(images),
        "corr_channels": [corr(learned[:, c], true[:, c]) for c in range(3)],
        "corr_brightness": corr(bright_l, bright_t),
        "corr_white_balance": [corr(learned[:, c] - bright_l, true[:, c] - bright_t) for c in range(3)],
        "slope_brightness": float(np.polyfit(bright_t, bright_l, 1)[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--scene", type=Path, help="the appearance scene (default: the run's data.path)")
    args = parser.parse_args(argv)
    result = gain_agreement(args.run, args.scene)
    print(f"{result['photos']} trained photos")
    print("correlation per channel (R, G, B): " + ", ".join(f"{c:.3f}" for c in result["corr_channels"]))
    print(f"brightness: correlation {result['corr_brightness']:.3f}, slope {result['slope_brightness']:.3f}")
    print("white balance (R, G, B): " + ", ".join(f"{c:.3f}" for c in result["corr_white_balance"]))
    print(json.dumps({"tool": "appearance_gains", "run": str(args.run), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
