"""CesiumJS (tools/interop/node_modules/cesium, a 3D Tiles renderer with Gaussian splats we did not write) in
headless chromium: render one camera of a tileset written by `momentumgs export --format tiles`, one level at
a time, and compare with our own CPU render of the same level. Used by tests/test_tiles.py; also a command
that prints the figures for a run (docs/formats.md records them):

    python tests/cesium_tiles.py RUN TILESET_DIR [--view I] [--zoom Z] [--out FOLDER]

Cesium is served from node_modules by a local HTTP server (no network: no ion, imagery, terrain or globe).
One level is shown by a copy of tileset.json cut below that level (`level_tileset`, written in a work
folder, not in the tileset's), its tiles' contents the exported ones; the camera is the scene camera's,
carried through the tileset's frames (`cesium_camera`). CesiumJS's readiness is read from private state of
its splat primitive (1.145: `_numSplats`, `_pendingSnapshot`), then the image must stop changing.
"""

from __future__ import annotations

import functools
import http.server
import json
import socketserver
import sys
import threading
from pathlib import Path

import numpy as np
from browser import Chromium

ROOT = Path(__file__).resolve().parent.parent
CESIUM = ROOT / "tools" / "interop" / "node_modules" / "cesium" / "Build" / "Cesium"

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/cesium/Widgets/widgets.css">
<style>html,body{margin:0;padding:0;overflow:hidden;background:#000}
#view{position:absolute;left:0;top:0;width:%(w)dpx;height:%(h)dpx}
.cesium-widget-credits{display:none !important}</style>
<script>window.CESIUM_BASE_URL = '/cesium/';</script><script src="/cesium/Cesium.js"></script></head>
<body><div id="view"></div><script>
window.state = {status: 'starting'};
(async () => {
  try {
    Cesium.Ion.defaultAccessToken = '';
    const widget = new Cesium.CesiumWidget('view', {
      baseLayer: false, globe: false, skyBox: false, skyAtmosphere: false, shadows: false,
      useBrowserRecommendedResolution: false, requestRenderMode: false,
      contextOptions: {webgl: {alpha: false, antialias: false, preserveDrawingBuffer: true}},
    });
    const scene = widget.scene;
    scene.backgroundColor = Cesium.Color.BLACK;
    scene.fog.enabled = false;
    if (scene.sun) scene.sun.show = false;
    if (scene.moon) scene.moon.show = false;
    scene.highDynamicRange = false;
    scene.postProcessStages.fxaa.enabled = false;
    window.state = {status: 'loading', webgl2: scene.context.webgl2};
    const tileset = await Cesium.Cesium3DTileset.fromUrl(%(tileset)s, {
      maximumScreenSpaceError: %(sse)f, skipLevelOfDetail: false,
    });
    scene.primitives.add(tileset);
    const c = %(camera)s;
    const frustum = scene.camera.frustum;
    frustum.fov = c.fov; frustum.aspectRatio = c.aspect; frustum.near = c.near; frustum.far = c.far;
    frustum.xOffset = c.xOffset; frustum.yOffset = c.yOffset;
    scene.camera.setView({
      destination: new Cesium.Cartesian3(...c.position),
      orientation: {direction: new Cesium.Cartesian3(...c.direction), up: new Cesium.Cartesian3(...c.up)},
    });
    let frames = 0;
    scene.postRender.addEventListener(() => {
      frames += 1;
      const splats = scene.primitives.length;
      window.state = {
        status: tileset.tilesLoaded ? 'loaded' : 'loading', frames, webgl2: scene.context.webgl2,
        selected: tileset.statistics.selected, contentsReady: tileset.statistics.numberOfLoadedTilesTotal,
        canvas: [scene.canvas.width, scene.canvas.height], fov: scene.camera.frustum.fov,
        // CesiumJS 1.145's private state of the splats it draws: how many, and whether a rebuild is pending
        splats: tileset.gaussianSplatPrimitive ? tileset.gaussianSplatPrimitive._numSplats : 0,
        pending: !!(tileset.gaussianSplatPrimitive && tileset.gaussianSplatPrimitive._pendingSnapshot),
        fovy: scene.camera.frustum.fovy, aspect: scene.camera.frustum.aspectRatio,
      };
    });
    tileset.tileFailed.addEventListener((e) => { window.state = {status: 'failed', message: e.message}; });
  } catch (e) {
    window.state = {status: 'failed', message: String(e && e.stack || e)};
  }
})();
</script></body></html>
"""


def level_tileset(tileset: dict, level: int, prefix: str = "") -> dict:
    """A copy of `tileset` that shows level `level` of every block (0: full detail): each block's chain is
    cut at that level's tile, which becomes the leaf; `prefix` goes before each content URI."""
    doc = json.loads(json.dumps(tileset))
    for i, block in enumerate(doc["root"]["children"]):
        node, top = block, block
        while not node["content"]["uri"].endswith(f"/level_{level}.glb"):
            node = node["children"][0]
        cut = {k: v for k, v in node.items() if k != "children"}
        cut["content"] = {"uri": prefix + node["content"]["uri"]}
        cut["geometricError"] = 0.0
        if "transform" in top:
            cut["transform"] = top["transform"]
        doc["root"]["children"][i] = cut
    return doc


def cesium_camera(cam, root_transform: np.ndarray) -> dict:
    """Cesium's camera (ECEF position, direction, up; frustum) of a scene camera, given the tileset root's
    transform (tileset frame -> ECEF, column-major list or 4x4)."""
    from momentumgs.export.tiles3d import TILES_FROM_WORLD

    m = np.asarray(root_transform, dtype=np.float64)
    m = m.reshape(4, 4).T if m.ndim == 1 else m
    to_ecef = m[:3, :3] @ TILES_FROM_WORLD
    rot = cam.viewmat[:3, :3]  # world -> camera (OpenCV: x right, y down, z forward)
    position = to_ecef @ cam.center + m[:3, 3]
    direction = to_ecef @ rot[2]
    up = to_ecef @ -rot[1]
    w, h = cam.width, cam.height
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    # Cesium's fov is the wider side's; an off-centre principal point is not handled (NaN offsets: it fails)
    fov = 2 * np.arctan(w / 2 / fx) if w >= h else 2 * np.arctan(h / 2 / fy)
    return {
        "position": position.tolist(),
        "direction": direction.tolist(),
        "up": up.tolist(),
        "fov": float(fov),
        "aspect": w / h,
        "near": 0.05,
        "far": 1e4,
        "xOffset": 0.0 if abs(cx - w / 2) < 1e-6 else float("nan"),
        "yOffset": 0.0 if abs(cy - h / 2) < 1e-6 else float("nan"),
    }


class _Chromium(Chromium):
    """tests/browser.py's headless chromium, one device pixel per CSS pixel: screenshots match the canvas."""

    FLAGS = [*Chromium.FLAGS, "--force-device-scale-factor=1", "--ignore-gpu-blocklist"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test's output stays readable
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class Server:
    """A local HTTP server: /cesium/ -> CesiumJS's build, /tiles/ -> the tileset folder, /page.html."""

    def __init__(self, tiles_dir: Path, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        for name, target in (("cesium", CESIUM), ("tiles", Path(tiles_dir).resolve())):
            link = work / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        handler = functools.partial(_Quiet, directory=str(work))
        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self, name: str, tileset_path: str, camera: dict, w: int, h: int, sse: float = 1e-3) -> str:
        text = PAGE % {
            "w": w,
            "h": h,
            "tileset": json.dumps(tileset_path),
            "camera": json.dumps(camera),
            "sse": sse,
        }
        (self.work / name).write_text(text)
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def render_levels(tiles_dir: Path, cam, work: Path, levels: list[int], settle_s: float = 2.0) -> dict:
    """Cesium's render of `cam` for each level (and the whole tileset, key 'all', its own LoD choosing).
    -> {level: [H, W, 3] uint8}, and the page states under 'states'"""
    from browser import wait_for

    tiles_dir = Path(tiles_dir)
    tileset = json.loads((tiles_dir / "tileset.json").read_text())
    camera = cesium_camera(cam, tileset["root"]["transform"])
    server = Server(tiles_dir, work)  # the level tilesets beside the pages, their contents under tiles/
    for level in levels:
        (work / f"level_{level}.json").write_text(json.dumps(level_tileset(tileset, level, "tiles/")))
    out, states = {}, {}
    w, h = cam.width, cam.height
    browser = None
    try:
        for key in [*levels, "all"]:
            name = "/tiles/tileset.json" if key == "all" else f"/level_{key}.json"
            url = server.page(f"level_{key}.html", name, camera, w, h, 16.0 if key == "all" else 1e-3)
            if browser is None:
                browser = _Chromium("about:blank", work / "profile")
            browser.open(url, settle_s=0.5)

            expected = None if key == "all" else _level_count(tileset, key)

            seen = []

            def ready(browser=browser, expected=expected, seen=seen):
                s = browser.evaluate("window.state") or {}
                if s.get("status") == "failed":
                    return True
                splats = s.get("splats", 0)
                done = s.get("status") == "loaded" and not s.get("pending") and s.get("frames", 0) > 3
                seen.append(splats if done else -1)
                if expected:
                    return done and splats == expected
                # Cesium's own choice: loads the coarse levels first, then refines; the same count for 2 s
                return done and splats > 0 and len(seen) >= 20 and len(set(seen[-20:])) == 1

            wait_for(ready, 120, f"Cesium to load {name}")
            state = browser.evaluate("window.state")
            if state.get("status") == "failed":
                raise AssertionError(f"Cesium failed on {name}: {state.get('message')}")
            out[key] = _settled(browser, w, h, settle_s)
            states[key] = browser.evaluate("window.state")
    finally:
        if browser is not None:
            browser.close()
        server.close()
    out["states"] = states
    return out


def zoomed(cam, factor: int):
    """The camera `cam` with `factor` times its pixels (same pose and field of view)."""
    import dataclasses

    K = cam.K.copy()
    K[:2] *= factor
    return dataclasses.replace(cam, K=K, width=cam.width * factor, height=cam.height * factor)


def _level_count(tileset: dict, level: int) -> int:
    """How many Gaussians level `level` of the tileset holds (asset.extras.momentumgs.counts)."""
    return sum(block[level] for block in tileset["asset"]["extras"]["momentumgs"]["counts"])


def _settled(browser, w: int, h: int, step_s: float, timeout_s: float = 120.0) -> np.ndarray:
    """The page's image once it stops changing: CesiumJS builds the splats' textures and sorts them in a
    worker after the tiles have loaded, over several frames."""
    import time

    deadline = time.monotonic() + timeout_s
    last = browser.screenshot()[:h, :w]
    while True:
        time.sleep(step_s)
        image = browser.screenshot()[:h, :w]
        if np.abs(image.astype(np.int16) - last).mean() < 0.01 and image.any():
            return image
        if time.monotonic() > deadline:
            raise AssertionError(f"Cesium's image still changed after {timeout_s:.0f} s")
        last = image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def our_level_render(tiles_dir: Path, cam, level: int) -> np.ndarray:
    """Our CPU render of level `level` of every block of the tileset, read back from its .glb files."""
    import torch

    from momentumgs.export.gaussians import BakedGaussians, render_baked
    from momentumgs.export.gltf import read_glb
    from momentumgs.export.tiles3d import TILES_FROM_WORLD
    from momentumgs.render.view import camera_view

    tileset = json.loads((Path(tiles_dir) / "tileset.json").read_text())
    parts = []
    for block in tileset["root"]["children"]:
        offset = np.asarray(block["transform"]).reshape(4, 4).T[:3, 3]
        centre = TILES_FROM_WORLD.T @ offset  # the block's centre in world
        g = read_glb(Path(tiles_dir) / Path(block["content"]["uri"]).parent / f"level_{level}.glb")
        g.means = g.means + torch.from_numpy(centre).float()
        parts.append(g)
    g = BakedGaussians(
        *(torch.cat([getattr(p, k) for p in parts]) for k in ("means", "quats", "scales", "opacities", "sh"))
    )
    with torch.no_grad():
        image = render_baked(g, camera_view(cam, "cpu"))[0].clamp(0, 1)
    return (image.numpy() * 255 + 0.5).astype(np.uint8)


def main(argv: list[str]) -> int:
    import argparse

    from momentumgs.config import load_config
    from momentumgs.run_setup import load_scene

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("tiles")
    p.add_argument("--view", type=int, default=None, help="camera index (default: the first test view)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: none written)")
    p.add_argument("--zoom", type=int, default=1, help="render at this multiple of the view's size")
    a = p.parse_args(argv)
    cfg = load_config(Path(a.run) / "config.yaml")
    scene = load_scene(cfg)
    cam = zoomed(scene.cameras[scene.test_ids[0] if a.view is None else a.view], a.zoom)
    tileset = json.loads((Path(a.tiles) / "tileset.json").read_text())
    levels = list(range(len(tileset["asset"]["extras"]["momentumgs"]["levels"])))
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        theirs = render_levels(Path(a.tiles), cam, Path(work), levels)
    ours = {k: our_level_render(Path(a.tiles), cam, k) for k in levels}
    rows = []
    for k in levels:
        rows.append(
            {
                "level": k,
                "psnr_cesium_vs_ours": psnr(theirs[k], ours[k]),
                "psnr_cesium_vs_our_full": psnr(theirs[k], ours[0]),
                "psnr_ours_vs_our_full": psnr(ours[k], ours[0]),
            }
        )
        print(
            f"level {k}: Cesium vs ours {rows[-1]['psnr_cesium_vs_ours']:.2f} dB; vs our full detail: Cesium "
            f"{rows[-1]['psnr_cesium_vs_our_full']:.2f} dB, ours {rows[-1]['psnr_ours_vs_our_full']:.2f} dB"
        )
    print(f"whole tileset (Cesium's own LoD): vs our full detail {psnr(theirs['all'], ours[0]):.2f} dB")
    if a.out:
        import cv2

        Path(a.out).mkdir(parents=True, exist_ok=True)
        for k in levels:
            cv2.imwrite(str(Path(a.out) / f"cesium_level_{k}.png"), theirs[k][..., ::-1])
            cv2.imwrite(str(Path(a.out) / f"ours_level_{k}.png"), ours[k][..., ::-1])
        cv2.imwrite(str(Path(a.out) / "cesium_all.png"), theirs["all"][..., ::-1])
    print(json.dumps({"view": cam.name, "levels": rows, "states": theirs["states"]}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
