"""Frames straight from video files with OpenCV: a clip's frames only, and the frame count written to the CSV index.

OpenCV is already a dependency; scripts/compare_decoders.py measures it against PyAV and torchcodec
(docs/speed.md, "Decoding from videos").
"""
import cv2
import numpy as np


class VideoError(Exception):
    """A video that cannot be opened or decoded; the message names the file."""


def open_video(path: str) -> cv2.VideoCapture:
    """One decoding thread: a loader already runs one worker process per core."""
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        raise VideoError(f"{path}: cannot open this video (missing, empty or not a video)")
    return capture


def frame_count(path: str) -> int:
    """The number of frames the container declares (no decoding): what the CSV index records."""
    capture = open_video(path)
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side equal to `short_side` and the aspect ratio kept."""
    scale = short_side / min(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging; as extract_frame.py writes frames."""
    height, width = frame.shape[:2]
    size = resized_shape(height, width, short_side)
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if size[1] < height else cv2.INTER_LINEAR)


def clip_frames(path: str, indices: list[int], short_side: int | None = None) -> list[np.ndarray]:
    """The frames at increasing 0-based `indices`, RGB (H, W, 3) uint8, short side resized to `short_side` if given:
    seek to the first, then decode on, converting only the frames asked for (after resizing, on fewer pixels)."""
    capture = open_video(path)
    frames = []
    try:
        if indices[0] > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, indices[0])
        position = indices[0]
        for index in indices:
            while position <= index:
                if not capture.grab():
                    raise VideoError(f"{path}: cannot decode frame {position + 1} (truncated or corrupt); "
                                     f"check it with ProcessData/check_videos.py")
                position += 1
            ok, frame = capture.retrieve()
            if not ok:
                raise VideoError(f"{path}: cannot decode frame {index + 1} (corrupt); check it with "
                                 f"ProcessData/check_videos.py")
            if short_side is not None:
                frame = resize_short_side(frame, short_side)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def read_all_frames(path: str) -> list[np.ndarray]:
    """Every frame decodable from the start, RGB; stops at the first that is not."""
    capture = open_video(path)
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return frames
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
