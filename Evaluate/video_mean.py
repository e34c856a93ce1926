"""Per-video means of per-window values: how test windows become one prediction or feature per video."""
import torch


class VideoMean:
    """Adds each window's value to its video's running sum on the device; `result()` is the mean per video."""

    def __init__(self, num_videos: int, device: torch.device):
        self.num_videos = num_videos
        self.sums = None  # (num_videos, width), made at the first add, when the width is known
        self.windows = torch.zeros(num_videos, device=device)

    def add(self, videos: torch.Tensor, values: torch.Tensor) -> None:
        if self.sums is None:
            self.sums = torch.zeros(self.num_videos, values.shape[1], device=values.device)
        self.sums.index_add_(0, videos, values)
        self.windows.index_add_(0, videos, torch.ones_like(videos, dtype=self.windows.dtype))

    def result(self) -> torch.Tensor:
        """(num_videos, width) on the CPU."""
        return (self.sums / self.windows[:, None]).cpu()
