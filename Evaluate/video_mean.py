"""Per-video means of per-window values: how test windows become one prediction or feature per video."""
import torch

from CPCTrans.distributed import Processes


class VideoMean:
    """Adds each window's value (`width` numbers) to its video's running sum on the device; `result()` is the mean
    per video, over the windows every process added when given the run's `processes`."""

    def __init__(self, num_videos: int, width: int, device: torch.device):
        self.sums = torch.zeros(num_videos, width, device=device)
        self.windows = torch.zeros(num_videos, device=device)

    def add(self, videos: torch.Tensor, values: torch.Tensor) -> None:
        self.sums.index_add_(0, videos, values)
        self.windows.index_add_(0, videos, torch.ones_like(videos, dtype=self.windows.dtype))

    def result(self, processes: Processes = Processes()) -> torch.Tensor:
        """(num_videos, width) on the CPU."""
        return processes.sum(self.sums) / processes.sum(self.windows)[:, None]
