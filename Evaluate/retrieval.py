"""Nearest-neighbour video retrieval, as CoCLR and MemDPC report it: test videos query training videos."""
import torch
from torch.nn import functional as F
from tqdm import tqdm

from CPCTrans.runtime import autocast
from Evaluate.video_mean import VideoMean

RECALL_AT = (1, 5, 10, 20)


@torch.no_grad()
def video_features(model, batches, device: torch.device, amp: bool, num_videos: int,
                   desc: str = "features") -> torch.Tensor:
    """(num_videos, C) on the CPU: each video's classifier input (model.features) averaged over its windows.
    `batches` yields DeviceBatch (CPCTrans.prefetch)."""
    model.eval()
    features = VideoMean(num_videos, device)
    for batch in tqdm(batches, desc=desc, dynamic_ncols=True, leave=False):
        with autocast(device, amp):
            features.add(batch.videos, model.features(batch.inputs).float())
    return features.result()


def recall_at_k(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                test_labels: torch.Tensor, ks=RECALL_AT) -> dict[str, float]:
    """R@k: the share of test videos with a same-class video among their k nearest training videos (cosine
    similarity after centring both sets on the training mean)."""
    centre = train_features.mean(dim=0)
    gallery = F.normalize(train_features - centre, dim=1)
    queries = F.normalize(test_features - centre, dim=1)
    nearest = (queries @ gallery.t()).topk(min(max(ks), len(gallery)), dim=1).indices
    hits = train_labels[nearest] == test_labels[:, None]
    return {f"R@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}
