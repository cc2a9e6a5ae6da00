"""The viser server: each browser tab gets our rasterizer's render of its camera as the background image,
plus the training cameras (click one to jump there), the block cells and a small control panel."""

from __future__ import annotations

import io
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import viser

from momentumgs.errors import UserError
from momentumgs.io_utils import write_bytes_atomic
from momentumgs.report.blocks import metrics_markdown

from .camera import CameraPose, ClientCamera, client_view, move_client_to, scene_camera_pose
from .models import (
    ModelHolder,
    appearance_choices,
    appearance_of_choice,
    content_positions,
    content_summary,
    is_baked,
    render_rgb8,
)
from .run_info import RunInfo
from .splats import backdrop_image, bake_for_browser, browser_note, browser_splat_arrays, export_available
from .streaming import NOT_SHOWN, moved_enough, select_levels, selected_count
from .worker import LatestRenderWorker

DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only; --host opens it to others
SERVER_MODE = "server: our rasterizer"
BROWSER_MODE = "browser: baked splats"
BLOCK_COLORS = [(230, 80, 60), (60, 160, 230), (90, 200, 90), (230, 190, 50), (170, 90, 220), (40, 200, 190)]


@dataclass
class ViewerOptions:
    host: str = DEFAULT_HOST
    port: int = 8080  # 0: any free port
    max_res: int = 320  # longer side of the frames sent while the camera moves
    still_res: int = 0  # ... once it rests; 0: twice max_res
    screenshot_dir: Path = Path("screenshots")
    device: str = "cpu"
    rest_s: float = 0.4
    verbose: bool = True
    splats: bool = False  # start in the browser-splat mode (needs the exporter; not for live training)
    splat_budget: int = 1_000_000  # browser splats at most; a larger model is streamed (viewer/streaming.py)


class ClientSession:
    """One browser tab: its latest camera and its render worker."""

    def __init__(self, client: viser.ClientHandle, viewer: Viewer):
        self.client = client
        self.viewer = viewer
        self.camera: ClientCamera | None = None
        self.last_image: np.ndarray | None = None  # the frame most recently sent
        self.backdrop = False  # is the backdrop behind the browser's splats shown?
        self.worker = LatestRenderWorker(
            self.render, self.deliver, viewer.resolutions, viewer.options.rest_s, viewer.report_error
        )
        # streamed splats: the level of each chunk this tab has, and what it was sent
        self.stream_levels: np.ndarray | None = None
        self.splats_shown = 0
        self.splats_sent = 0  # in all, since the tab connected
        self.stream_seconds = 0.0  # the last selection's time on the server
        self._streamed_pose = None  # (position, forward) of the last selection
        # (preview, still) "resolutions" (0, 1): while the camera moves, then once when it rests
        self.streamer = LatestRenderWorker(
            lambda camera, res: self.stream(camera, rest=res == 1),
            lambda *_: None,
            lambda: (0, 1),
            viewer.options.rest_s,
            viewer.report_error,
        )
        client.camera.on_update(self._camera_moved)
        if viewer.mode == BROWSER_MODE:  # `view --splats`: no camera report is needed to show it
            self.show_backdrop()

    def _camera_moved(self, camera) -> None:
        self.camera = ClientCamera.from_handle(camera)
        if self.viewer.mode == BROWSER_MODE:
            self.show_backdrop()
            self.restream()
        self.rerender()

    def restream(self) -> None:
        """Choose and send this tab's chunk levels for its newest camera (on the streaming thread)."""
        if self.camera is not None and self.viewer.chunks is not None:
            self.streamer.request(self.camera)

    def stream(self, camera: ClientCamera, rest: bool = True) -> None:
        """Send the chunks whose level changed for `camera`, remove those left out: at once when it has
        moved enough since the last selection (streaming.moved_enough), else when it rests."""
        chunks = self.viewer.chunks
        if chunks is None or self.viewer.mode != BROWSER_MODE:
            return
        forward = vtf_forward(camera.wxyz)
        pose = (np.asarray(camera.position), forward)
        if not (rest or self.stream_levels is None) and not moved_enough(
            self._streamed_pose, pose, chunks.levels.extent
        ):
            return
        self._streamed_pose = pose
        t0 = time.perf_counter()
        levels = select_levels(chunks.levels, camera.position, self.viewer.options.splat_budget, forward)
        self.stream_seconds = time.perf_counter() - t0
        old = self.stream_levels
        for c in np.nonzero(levels != old)[0] if old is not None else range(len(levels)):
            name = f"/stream/{c:05d}"
            if levels[c] == NOT_SHOWN:
                if old is not None and old[c] != NOT_SHOWN:
                    self.client.scene.remove_by_name(name)
                continue
            arrays = chunks.arrays(int(c), int(levels[c]))
            self.client.scene.add_gaussian_splats(name, **arrays)  # replaces the chunk's node
            self.splats_sent += len(arrays["centers"])
        self.stream_levels = levels
        self.splats_shown = selected_count(chunks.levels, levels)
        self.viewer.frame_text.content = (
            f"{self.splats_shown:,} of {chunks.levels.total:,} splats drawn by the browser (budget "
            f"{self.viewer.options.splat_budget:,}; chosen in {self.stream_seconds * 1000:.1f} ms)"
        )

    def clear_stream(self) -> None:
        """Remove this tab's streamed chunks (leaving browser mode, or a new bake)."""
        levels, self.stream_levels, self.splats_shown = self.stream_levels, None, 0
        self._streamed_pose = None
        if levels is not None:
            for c in np.nonzero(levels != NOT_SHOWN)[0]:
                self.client.scene.remove_by_name(f"/stream/{c:05d}")

    def rerender(self, refine: bool = True) -> None:
        if self.camera is not None and self.viewer.mode == SERVER_MODE:
            self.worker.request(self.camera, refine)

    def render(self, camera: ClientCamera, max_res: int) -> np.ndarray:
        view = client_view(camera, max_res, self.viewer.options.device)
        content = self.viewer.holder.get()
        return render_rgb8(content, view, self.viewer.appearance_row(content))

    def deliver(self, image: np.ndarray, still: bool) -> None:
        if self.viewer.mode != SERVER_MODE:  # a frame finished after the switch to splats
            return
        self.last_image = image
        self.backdrop = False
        self.client.scene.set_background_image(image, format="jpeg", jpeg_quality=self.viewer.jpeg_quality())
        self.viewer.show_frame_stats(image, self.worker.last_seconds, still)

    def show_backdrop(self) -> None:
        """The renderer's background behind the splats, as the server's frames have it: sent as the tab
        connects (its camera report may come before this session's handler, and then never), and again at
        its first camera report (a page may drop a background image that comes before its canvas)."""
        if not self.backdrop:
            self.client.scene.set_background_image(backdrop_image(), format="png")
            self.backdrop = self.camera is not None


class Viewer:
    def __init__(
        self,
        holder: ModelHolder,
        info: RunInfo,
        options: ViewerOptions,
        title: str = "momentumgs",
        chunks=None,  # the browser splats ready cut into chunks (a BakedChunks or alike), else made as needed
    ):
        self.holder = holder
        self.info = info
        self.options = options
        self.sessions: dict[int, ClientSession] = {}
        self._lock = threading.Lock()
        self.mode = SERVER_MODE
        self.splats = None  # the scene node of browser splats, while shown
        self.chunks = None  # a model above the splat budget, in chunks with levels (viewer/chunks.py)
        self._given_chunks = chunks
        self._splats_count = 0
        self._shot_numbers = itertools.count(1)
        self.server = viser.ViserServer(
            host=options.host, port=options.port, label=title, verbose=options.verbose
        )
        self.server.gui.configure_theme(control_width="large")
        if info.up is not None:
            self.server.scene.set_up_direction(tuple(float(v) for v in info.up))
        # parent frames: hiding one hides its group
        self.groups = {
            name: self.server.scene.add_frame(name, show_axes=False) for name in ("/cameras", "/blocks")
        }
        self._add_gui()
        self._add_cameras()
        self._add_blocks()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        holder.on_change(self._model_changed)
        if options.splats:
            self.set_mode(BROWSER_MODE)

    # --- server ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def watching(self) -> bool:
        """Is any browser connected? (Live training copies the model only then.)"""
        return bool(self.sessions)

    def stop(self) -> None:
        with self._lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for s in sessions:
            s.worker.stop()
            s.streamer.stop()
        self.server.stop()

    def _connect(self, client: viser.ClientHandle) -> None:
        session = ClientSession(client, self)
        with self._lock:
            self.sessions[client.client_id] = session
        start = self.start_pose()
        if start is not None:
            move_client_to(client, start, self.info.up, self.look_distance())

    def _disconnect(self, client: viser.ClientHandle) -> None:
        with self._lock:
            session = self.sessions.pop(client.client_id, None)
        if session is not None:
            session.worker.stop()
            session.streamer.stop()

    def _model_changed(self) -> None:
        with self._lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            s.rerender(refine=False)  # a live model: previews only, until the user moves the camera
        self._show_model_stats()

    # --- camera placement ------------------------------------------------------------------------

    def start_pose(self) -> CameraPose | None:
        """Where a new tab starts: the first training camera, else looking at the model from above."""
        if self.info.train_cameras:
            return scene_camera_pose(self.info.train_cameras[0])
        points = content_positions(self.holder.get())
        return None if points is None else overview_pose(points, self.info.up)

    def look_distance(self) -> float:
        return 0.25 * scene_size(self.info, self.holder)

    # --- scene decorations -----------------------------------------------------------------------

    def _add_cameras(self) -> None:
        scale = 0.03 * scene_size(self.info, self.holder)
        for i, cam in enumerate(self.info.train_cameras):
            pose = scene_camera_pose(cam)
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i:05d}",
                fov=pose.fov,
                aspect=pose.aspect,
                scale=scale,
                thickness=1.5,
                thickness_units="screen",
                color=(255, 160, 40),
                wxyz=pose.wxyz,
                position=pose.position,
            )
            frustum.on_click(self._jump_handler(pose))

    def _jump_handler(self, pose: CameraPose):
        def jump(event) -> None:
            move_client_to(event.client, pose, self.info.up, self.look_distance())

        return jump

    def _add_blocks(self) -> None:
        for box in self.info.blocks:
            color = BLOCK_COLORS[box.index % len(BLOCK_COLORS)]
            center = (box.world_min + box.world_max) / 2
            self.server.scene.add_box(
                f"/blocks/{box.index:03d}",
                color=color,
                dimensions=tuple(float(v) for v in box.world_max - box.world_min),
                wireframe=True,
                position=center,
            )
            self.server.scene.add_label(f"/blocks/{box.index:03d}/label", f"block {box.index}")

    # --- control panel ---------------------------------------------------------------------------

    def _add_gui(self) -> None:
        gui = self.server.gui
        o = self.options
        with gui.add_folder("Rendering"):
            self.preview_slider = gui.add_slider("preview px", 64, 1920, 16, o.max_res)
            self.still_slider = gui.add_slider("still px", 64, 3840, 16, o.still_res or 2 * o.max_res)
            self.quality_slider = gui.add_slider("JPEG quality", 30, 100, 1, 85)
            if self.splat_mode_possible():
                start = BROWSER_MODE if o.splats else SERVER_MODE
                mode = gui.add_dropdown("renderer", (SERVER_MODE, BROWSER_MODE), initial_value=start)
                mode.on_update(lambda _: self.set_mode(mode.value))
            choices = appearance_choices(self.holder.get())
            self.appearance_menu = None
            if choices:  # a model with a per-photo appearance table
                self.appearance_menu = gui.add_dropdown(
                    "appearance", tuple(choices), initial_value=choices[0]
                )
                self.appearance_menu.on_update(lambda _: self._appearance_changed())
            self.frame_text = gui.add_markdown("no frame yet")
            self.splat_note = gui.add_markdown("", visible=False)  # what the browser's splats leave out
            self.model_text = gui.add_markdown("")
        self._show_model_stats()
        with gui.add_folder("Screenshot"):
            gui.add_button("Save screenshot").on_click(self._screenshot_clicked)
            self.shot_text = gui.add_markdown(f"saved to `{o.screenshot_dir}`")
        with gui.add_folder("Scene"):
            cameras = gui.add_checkbox("training cameras", True)
            cameras.on_update(lambda _: self._set_visible("/cameras", cameras.value))
            blocks = gui.add_checkbox("block cells", True)
            blocks.on_update(lambda _: self._set_visible("/blocks", blocks.value))
        if self.info.block_metrics:
            with gui.add_folder("Blocks"):
                gui.add_markdown(metrics_markdown(self.info.block_metrics))

    def appearance_row(self, content) -> int | None:
        """The embedding row chosen in the drop-down (None: neutral, or a model without an embedding)."""
        menu = self.appearance_menu
        return None if menu is None else appearance_of_choice(content, menu.value)

    def _appearance_changed(self) -> None:
        if self.mode == BROWSER_MODE:  # bake the splats again in the new appearance
            self.set_mode(BROWSER_MODE)
            return
        with self._lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            s.rerender()

    def _set_visible(self, group: str, visible: bool) -> None:
        self.groups[group].visible = visible

    def resolutions(self) -> tuple[int, int]:
        preview = int(self.preview_slider.value)
        return preview, max(preview, int(self.still_slider.value))

    def jpeg_quality(self) -> int:
        return int(self.quality_slider.value)

    def show_frame_stats(self, image: np.ndarray, seconds: float, still: bool) -> None:
        kind = "still" if still else "preview"
        self.frame_text.content = (
            f"{kind} {image.shape[1]}x{image.shape[0]} rendered in {seconds * 1000:.0f} ms"
        )

    def _show_model_stats(self) -> None:
        self.model_text.content = content_summary(self.holder.get())

    # --- renderer mode ---------------------------------------------------------------------------

    def splat_mode_possible(self) -> bool:
        """Browser splats need the exporter and a fixed model (a live one would need a bake per snapshot)."""
        content = self.holder.get()
        return export_available() and content is not None and not getattr(content, "info", {}).get("live")

    def set_mode(self, mode: str) -> None:
        """Server rendering (frames pushed as the background), or baked splats drawn by the browser."""
        if mode == BROWSER_MODE and not self.splat_mode_possible():
            raise UserError("browser splats need the exporter (momentumgs.export) and a trained model")
        self.mode = mode
        with self._lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            s.clear_stream()
        if mode == BROWSER_MODE:
            self._show_splats()
            for s in sessions:
                s.show_backdrop()
                s.restream()
            if self.chunks is None:
                self.frame_text.content = f"{self._splats_count} splats drawn by the browser"
            self.splat_note.content = browser_note(self.holder.get())
        else:
            if self.splats is not None:
                self.splats.remove()
                self.splats = None
            self.chunks = None
            for s in sessions:
                s.rerender()
        self.splat_note.visible = mode == BROWSER_MODE

    def _show_splats(self) -> None:
        """One node of every splat, or for a model above the budget chunks that each tab streams."""
        content = self.holder.get()
        if self.splats is not None:
            self.splats.remove()
            self.splats = None
        self.chunks = self._given_chunks
        if self.chunks is not None:
            return
        if is_baked(content):
            baked = content
        else:
            baked = bake_for_browser(content, self.info.train_cameras, self.appearance_row(content))
        if baked.count > self.options.splat_budget:
            from .chunks import chunk_target, make_chunks

            self.frame_text.content = f"cutting {baked.count:,} splats into chunks with levels of detail"
            self.chunks = make_chunks(baked, target=chunk_target(self.options.splat_budget))
            return
        arrays = browser_splat_arrays(baked)
        self._splats_count = len(arrays["centers"])
        self.splats = self.server.scene.add_gaussian_splats("/splats", **arrays)

    def report_error(self, exc: BaseException) -> None:
        self.frame_text.content = f"render failed: {type(exc).__name__}: {exc}"

    # --- screenshots -----------------------------------------------------------------------------

    def _screenshot_clicked(self, event) -> None:
        session = self.sessions.get(event.client.client_id)
        if session is None or session.camera is None:
            return
        try:
            path = self.save_screenshot(session.camera)
        except (UserError, OSError) as exc:
            event.client.add_notification("No screenshot", str(exc), auto_close_seconds=8.0, color="red")
            return
        self.shot_text.content = f"saved `{path}`"
        event.client.add_notification("Screenshot saved", str(path), auto_close_seconds=5.0)

    def save_screenshot(self, camera: ClientCamera) -> Path:
        """Render `camera` at the still resolution and write it as a PNG; -> its path."""
        from PIL import Image

        _, still = self.resolutions()
        content = self.holder.get()
        image = render_rgb8(
            content, client_view(camera, still, self.options.device), self.appearance_row(content)
        )
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(self.options.screenshot_dir) / f"view-{stamp}-{next(self._shot_numbers):03d}.png"
        write_bytes_atomic(path, buffer.getvalue())
        return path.resolve()


def vtf_forward(wxyz) -> np.ndarray:
    """The viewing direction (camera +z, OpenCV axes) of a pose's rotation."""
    import viser.transforms as vtf

    return vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()[:, 2]


def scene_size(info: RunInfo, holder: ModelHolder) -> float:
    """A length for frustum sizes and orbit distances: the extent of the cameras, else of the model."""
    if len(info.train_cameras) > 1:
        points = np.stack([c.center for c in info.train_cameras])
    else:
        points = content_positions(holder.get())
        if points is None or len(points) < 2:
            return 1.0
    lo, hi = np.percentile(points, [2, 98], axis=0)
    return float(max(np.linalg.norm(hi - lo), 1e-3))


def overview_pose(points: np.ndarray, up: np.ndarray | None, fov: float = 0.9) -> CameraPose:
    """A camera above and beside the points' bounding box, looking at its centre."""
    import viser.transforms as vtf

    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    lo, hi = np.percentile(points, [2, 98], axis=0)
    center, radius = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    position = center + radius * (1.2 * up + 1.6 * side / np.linalg.norm(side))
    forward = (center - position) / np.linalg.norm(center - position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R_wc = np.stack([right, down, forward], axis=1)
    return CameraPose(position, vtf.SO3.from_matrix(R_wc).wxyz, fov, 4 / 3)
