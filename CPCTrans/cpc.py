"""CPC pretraining head: ConvGRU aggregation, recursive prediction and the dense contrastive scores."""
import torch
from torch import nn
from torch.nn import functional as F

from CPCTrans.convgru import GRU_DROPOUT, ConvGRU
from CPCTrans.encoder import VideoEncoder
from CPCTrans.weight_init import init_orthogonal

# Kinds of entries in the score matrix (docs/method.md, "The score matrix").
POSITIVE, SPATIAL, TEMPORAL, EASY = 0, 1, 2, 3
KIND_NAMES = ("positive", "spatial", "temporal", "easy")


class FuturePredictor(nn.Module):
    """Predicts the encoder outputs of the last `pred_step` frames from the first `num_seq - pred_step`."""

    kind = "cpc"

    def __init__(self, net: str = "resnet18", num_seq: int = 5, pred_step: int = 3, attn: str = "full",
                 pos_enc: str = "none", gru_dropout: float = GRU_DROPOUT):
        super().__init__()
        if not 0 < pred_step < num_seq:
            raise ValueError(f"--pred_step must be between 1 and --num_seq - 1, "
                             f"got {pred_step} with --num_seq {num_seq}")
        self.config = {"net": net, "num_seq": num_seq, "pred_step": pred_step, "attn": attn, "pos_enc": pos_enc,
                       "gru_dropout": gru_dropout}
        self.pred_step = pred_step
        self.encoder = VideoEncoder(net, attn, pos_enc)
        width = self.encoder.width
        self.agg = ConvGRU(width, width, dropout=gru_dropout)
        self.predictor = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 1))
        init_orthogonal(self.predictor)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, N, 3, H, W) -> (predictions, targets), each (B, pred_step, C, h, w)."""
        features = self.encoder(clips, predicted=self.pred_step)
        context_steps = features.shape[1] - self.pred_step
        targets = features[:, context_steps:]
        hidden = self.agg(torch.relu(features[:, :context_steps]))[:, -1]
        predictions = []
        for step in range(self.pred_step):
            prediction = self.predictor(hidden)
            predictions.append(prediction)
            if step + 1 < self.pred_step:
                hidden = self.agg.step(torch.relu(prediction), hidden)
        return torch.stack(predictions, dim=1), targets

    def train_mode(self, train_what: str) -> None:
        """Training mode; a frozen ResNet trunk (--train_what last) stays in eval mode, its BatchNorm statistics
        fixed as its weights are."""
        self.train()
        if train_what == "last":
            self.encoder.backbone.eval()


def dense_scores(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Every predicted vector against every target vector: a (B*P*h*w) x (B'*P*h*w) matrix.

    Rows and columns are ordered (video, step, position); with the targets of the predictions' own clips (B' = B)
    the positive of row i is column i. With every process's targets (B' = K * B, rank r's first), it is column
    r * B*P*h*w + i.
    Computed in fp32 even under bf16 autocast, as the reference computes it: once the targets barely change over
    time, a positive and its temporal negatives differ by less than bf16's resolution at their size.
    """
    channels = predictions.shape[2]
    pred = predictions.permute(0, 1, 3, 4, 2).reshape(-1, channels)
    target = targets.permute(0, 1, 3, 4, 2).reshape(-1, channels)
    with torch.autocast(predictions.device.type, enabled=False):
        return pred.float() @ target.float().t()


def reverse_future(clips: torch.Tensor, pred_step: int) -> torch.Tensor:
    """Clips (B, N, ...) with their last `pred_step` frames (the ones the pretext predicts) in reverse order."""
    return torch.cat([clips[:, :-pred_step], clips[:, -pred_step:].flip(1)], dim=1)


def contrastive_loss(scores: torch.Tensor, first_column: int = 0) -> torch.Tensor:
    """Cross-entropy whose positive of row i is column first_column + i."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device) + first_column)


def _grid(videos: range, steps: int, positions: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(video, step, position) of every row or column, in the score matrix's order."""
    return tuple(index.flatten() for index in torch.meshgrid(
        torch.arange(videos.start, videos.stop, device=device), torch.arange(steps, device=device),
        torch.arange(positions, device=device), indexing="ij"))


def score_kinds(batch: int, steps: int, positions: int, device: torch.device | None = None, first_video: int = 0,
                column_videos: int | None = None) -> torch.Tensor:
    """The kind of every entry of the score matrix: POSITIVE, SPATIAL, TEMPORAL or EASY (int8). Rows are videos
    first_video .. first_video + batch, columns videos 0 .. column_videos (default: the rows' own)."""
    column_range = range(first_video, first_video + batch) if column_videos is None else range(column_videos)
    row_video, row_step, row_position = _grid(range(first_video, first_video + batch), steps, positions, device)
    video, step, position = _grid(column_range, steps, positions, device)
    same_video = row_video[:, None] == video[None, :]
    same_position = row_position[:, None] == position[None, :]
    same_step = row_step[:, None] == step[None, :]
    kinds = torch.full(same_video.shape, EASY, dtype=torch.int8, device=device)
    kinds[same_video] = SPATIAL
    kinds[same_video & same_position] = TEMPORAL
    kinds[same_video & same_position & same_step] = POSITIVE
    return kinds


def step_similarity_sum(targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Targets (B, P, C, h, w) -> (sum, count) of the cosine similarities between a video's targets at two
    different steps and the same position, each vector first centred on its position's mean over the batch.

    Near 1: the encoder's outputs do not change from frame to frame, so temporal negatives cannot be told
    apart and the features carry no motion (the 1/3 plateau of full attention, docs/results.md). A random encoder
    scores well below (frames differ, and pretraining's per-frame color jitter makes them differ more).
    """
    batch, steps = targets.shape[:2]
    vectors = targets.float().flatten(3).transpose(2, 3)  # (B, P, positions, C)
    vectors = F.normalize(vectors - vectors.mean(dim=(0, 1), keepdim=True), dim=-1)
    # Over pairs of different steps: |sum over steps|^2 minus each step with itself.
    pair_sum = vectors.sum(dim=1).square().sum() - vectors.square().sum()
    return pair_sum, batch * vectors.shape[2] * steps * (steps - 1)


def plateau_warning(val_metrics: dict, pred_step: int, checkpoint, color_aug: str) -> str | None:
    """One line when a pretraining checkpoint's last validation sits on the 1/pred_step plateau: top-1 at
    1/pred_step, nine in ten wrong picks or more temporal (right video and position, wrong step) and the targets
    alike across steps (cos 0.95 or more). None otherwise, or when not measured (a checkpoint saved without
    validation). There the encoder gives a clip's frames nearly the same output, so its features carry little
    motion; docs/results.md has the runs that finetuned from such weights. A run pretrained with per-frame color
    (`color_aug` "frame", the reference's) is pointed to per-clip color, which left the plateau there.
    """
    needed = ("top1", "wrong_temporal", "step_similarity")
    if any(key not in val_metrics for key in needed):
        return None
    top1, temporal, similarity = (val_metrics[key] for key in needed)
    if abs(top1 - 1 / pred_step) > 0.03 or temporal < 0.9 or similarity < 0.95:
        return None
    way_off = ", or pretrain with --color_aug clip" if color_aug == "frame" else ""
    return (f"warning: {checkpoint}: its last validation sits on the pretext's 1/{pred_step} plateau (top1 "
            f"{top1:.4f}, {temporal:.0%} of the wrong picks temporal, targets across steps at cos {similarity:.2f}): "
            "the encoder gives a clip's frames nearly the same output and its features carry little motion "
            f"(docs/results.md); pretrain until the top-1 leaves 1/{pred_step}{way_off}")


class PretextMetrics:
    """Device-side counts for a stream of score matrices and their targets: top-1/3/5 hits, the kind of each
    top-1 pick, the targets' similarity across steps and, where given, the top-1 hits with the future reversed.

    Nothing here synchronises with the host; call `summary()` when numbers are needed. `step_similarity`
    False leaves the similarity out (training steps: a diagnostic that validation gives is not worth their time).
    """

    TOPK = (1, 3, 5)

    def __init__(self, step_similarity: bool = True):
        self._kinds_cache: dict[tuple, torch.Tensor] = {}
        self.step_similarity = step_similarity
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0
        self.rows = 0
        self.batches = 0
        self.hits = None
        self.picks = None
        self.similarity_sum = 0.0
        self.similarity_pairs = 0
        self.reversed_hits = None

    def _kinds(self, shape: tuple, device: torch.device) -> torch.Tensor:
        key = (*shape, str(device))
        if key not in self._kinds_cache:
            self._kinds_cache[key] = score_kinds(*shape[:3], device=device, first_video=shape[3],
                                                 column_videos=shape[4])
        return self._kinds_cache[key]

    @torch.no_grad()
    def update(self, loss: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, first_column: int = 0) -> None:
        """`targets` (B, pred_step, C, h, w) are the predictions' own targets; `scores` (dense_scores) has them as
        columns first_column onwards, among every process's."""
        batch, steps, positions = targets.shape[0], targets.shape[1], targets.shape[3] * targets.shape[4]
        rows = scores.shape[0]
        shape = (batch, steps, positions, first_column // (steps * positions), scores.shape[1] // (steps * positions))
        k = min(max(self.TOPK), scores.shape[1])
        ranked = scores.topk(k, dim=1).indices
        correct = ranked == torch.arange(rows, device=scores.device)[:, None] + first_column
        hits = torch.stack([correct[:, :min(topk, k)].any(dim=1).sum() for topk in self.TOPK])
        picked_kind = self._kinds(shape, scores.device).gather(1, ranked[:, :1])
        # Counted by comparison: bincount on a GPU reads the largest value back to the host.
        kinds = torch.arange(len(KIND_NAMES), device=scores.device, dtype=picked_kind.dtype)
        picks = (picked_kind == kinds).sum(dim=0)
        self.hits = hits if self.hits is None else self.hits + hits
        self.picks = picks if self.picks is None else self.picks + picks
        self.loss_sum = self.loss_sum + loss.detach().float() * rows
        if self.step_similarity:
            similarity_sum, pairs = step_similarity_sum(targets)
            self.similarity_sum = self.similarity_sum + similarity_sum
            self.similarity_pairs += pairs
        self.rows += rows
        self.batches += 1

    @torch.no_grad()
    def update_reversed(self, scores: torch.Tensor, first_column: int = 0) -> None:
        """Scores of the clips of the last `update`, with their predicted frames reversed (`reverse_future`);
        call it after every `update` or never.

        A pretext that tells its steps apart by what the frames show loses the top-1 of the reversed steps. One
        that keeps its top-1 does not tell them apart at all (the 1/3 plateau) or does so by something else:
        where a frame sits (a position encoding, a causal mask) or the context the targets can see. It can then
        score high while learning no motion (docs/results.md).
        """
        positives = torch.arange(scores.shape[0], device=scores.device) + first_column
        hits = (scores.argmax(dim=1) == positives).sum()
        self.reversed_hits = hits if self.reversed_hits is None else self.reversed_hits + hits

    def reduce(self, processes) -> None:
        """Replaces every count by its sum over the processes of the run (distributed.Processes); every process
        calls it at the same point, once the last batch was counted."""
        zeros = torch.zeros(len(self.TOPK) + len(KIND_NAMES))
        counts = torch.cat([torch.tensor([float(self.loss_sum), self.rows, float(self.similarity_sum),
                                          self.similarity_pairs, float(self.reversed_hits or 0),
                                          float(self.reversed_hits is not None)]),
                            zeros if self.hits is None else torch.cat([self.hits, self.picks]).cpu().double()])
        total = processes.sum(counts.double())
        self.loss_sum, self.rows, self.similarity_sum, self.similarity_pairs = (
            total[0].item(), int(total[1]), total[2].item(), int(total[3]))
        self.reversed_hits = total[4] if total[5] > 0 else None
        self.hits, self.picks = total[6:6 + len(self.TOPK)], total[6 + len(self.TOPK):]

    def summary(self) -> dict:
        if self.rows == 0:
            return {}
        hits = (self.hits.float() / self.rows).tolist()
        picks = self.picks.tolist()
        wrong = max(sum(picks) - picks[POSITIVE], 1)
        summary = {"loss": float(self.loss_sum) / self.rows}
        summary.update({f"top{k}": acc for k, acc in zip(self.TOPK, hits)})
        summary.update({f"wrong_{name}": picks[kind] / wrong
                        for kind, name in enumerate(KIND_NAMES) if kind != POSITIVE})
        if self.similarity_pairs:
            summary["step_similarity"] = float(self.similarity_sum) / self.similarity_pairs
        if self.reversed_hits is not None:
            summary["top1_reversed"] = float(self.reversed_hits) / self.rows
        return summary
