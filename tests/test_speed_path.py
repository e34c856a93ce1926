"""The fast path is the same method: bf16 agrees with fp32, both learn, the benchmark runs, GPU pieces match CPU."""
import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from CPCTrans import benchmark
from CPCTrans.augment import PRETRAIN, ClipAugment, apply_params, sample_params, ten_crop
from CPCTrans.cpc import FuturePredictor, PretextMetrics
from CPCTrans.data import ClipDataset, VideoRecord, clips_to_device, collate_clips, read_index
from CPCTrans.main import pretext_loss, train_step
from CPCTrans.runtime import adam, prepare_model

REPO = Path(__file__).resolve().parents[1]
BF16_TOLERANCE = 0.02  # relative difference of the initial loss, bf16 autocast vs fp32
# Compiled vs eager fp32 training steps on the same weights, relative differences. Measured with Inductor on the
# CPU over five steps: losses within 8e-7, gradients within 4e-3 (nearly all of it the first convolution's weight,
# whose gradient sums over every pixel in another order). A stale graph or wrong weights differ by tens of percent.
COMPILED_LOSS_TOLERANCE = 1e-4
COMPILED_GRADIENT_TOLERANCE = 2e-2


def fresh_model(state=None):
    torch.manual_seed(0)
    model = FuturePredictor()
    if state is not None:
        model.load_state_dict(state)
    return model


def test_bf16_and_fp32_losses_agree_at_initialisation():
    torch.manual_seed(1)
    clips = torch.randn(2, 5, 3, 64, 64)
    model = fresh_model().eval()
    cpu = torch.device("cpu")
    with torch.no_grad():
        fp32 = pretext_loss(model, clips, cpu, amp=False)[0]
        bf16 = pretext_loss(model, clips, cpu, amp=True)[0]
    assert abs(bf16.item() - fp32.item()) / fp32.item() < BF16_TOLERANCE


@pytest.mark.parametrize("amp", [False, True])
def test_a_short_run_lowers_the_loss(amp):
    torch.manual_seed(1)
    clips = torch.randn(2, 5, 3, 64, 64)
    model = fresh_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [train_step(model, optimizer, clips, torch.device("cpu"), amp)[0].item() for _ in range(6)]
    assert losses[-1] < 0.7 * losses[0]


def test_cpu_adam_gives_the_bits_of_torchs_default_per_tensor_adam():
    """runtime.adam uses multi-tensor kernels on the CPU for speed; the weights must not change by one bit."""
    cpu = torch.device("cpu")
    weights = []
    for make in (lambda params: adam(params, cpu, lr=1e-3, weight_decay=1e-5),
                 lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5, foreach=False)):
        model = fresh_model()
        optimizer = make(model.parameters())
        gradients = torch.Generator().manual_seed(1)
        for _ in range(3):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=gradients)
            optimizer.step()
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_benchmark_runs_on_the_cpu_and_prints_one_json_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "CPCTrans" / "benchmark.py"), "--img_dim", "64",
                             "--batch_size", "2", "--steps", "2", "--warmup", "1", "--videos", "3", "--frames", "16",
                             "--workers", "1", "--device", "cpu", "--prefetch", "2", "--profile", "trace.json.gz"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1
    report = json.loads(json_lines[0])
    assert report["device"] == "cpu" and report["batch_size"] == 2 and report["prefetch"] == 2
    for key in ("model_step_clips_per_s", "loader_clips_per_s", "end_to_end_clips_per_s", "augment_clips_per_s"):
        assert report[key] > 0
    assert report["end_to_end_over_model_step"] > 0
    assert "| end to end |" in result.stdout
    # The numbers are printed before the profile, which cannot take them with it when it fails.
    assert result.stdout.index(json_lines[0]) < result.stdout.index("Self CPU time total")
    # Where each step's time went, per thread: the step's convolutions in one, the crops of the batches prepared
    # ahead in another, neither longer than the step.
    summary = re.search(r"^per step, over the 3 profiled steps: wall (\S+) ms; inside torch operations: (.*); inside "
                        r"the loader's next\(\) (\S+) ms$", result.stdout, re.MULTILINE)
    assert summary, result.stdout
    busy_threads = re.findall(r"thread \d+ (\S+) ms \(most in ([^)]*)\)", summary.group(2))
    wall = float(summary.group(1))
    assert all(0 < float(busy) <= wall for busy, _ in busy_threads) and 0 <= float(summary.group(3)) <= wall
    labels = [label for _, label in busy_threads]
    assert any("Convolution" in label or "conv" in label for label in labels), labels
    assert "torchvision::roi_align" in labels
    # The trace holds both threads too; named .gz, it is written compressed (a GPU run's is over 16 MB plain).
    with gzip.open(tmp_path / "trace.json.gz", "rt") as trace:
        trace_events = json.load(trace)["traceEvents"]
    events = [event for event in trace_events if event.get("ph") == "X"]
    threads = {kind: {event["tid"] for event in events if kind in event["name"]}
               for kind in ("aten::convolution", "roi_align")}
    assert threads["aten::convolution"] and threads["roi_align"]
    assert threads["aten::convolution"].isdisjoint(threads["roi_align"])


def test_busy_time_counts_overlapping_operations_once():
    # (start, end) in microseconds: an operation inside another, one overlapping it, one apart -> ms
    assert benchmark.union_ms([(0, 1000), (200, 300), (500, 1500), (3000, 4000)]) == 2.5
    assert benchmark.union_ms([]) == 0


def test_benchmark_reads_existing_frame_folders(tmp_path):
    records = benchmark.write_frame_folders(tmp_path / "frames", videos=2, frames=16)
    found = benchmark.read_frame_root(tmp_path / "frames")
    assert [(r.folder, r.num_frames) for r in found] == [(r.folder, r.num_frames) for r in records]


def test_benchmark_from_videos_also_times_the_frames_of_the_same_footage(tmp_path, capsys):
    videos = benchmark.write_videos(tmp_path / "videos", videos=2, frames=16)
    assert [(Path(r.folder).name, r.num_frames) for r in videos] == [("video0000.mp4", 16), ("video0001.mp4", 16)]
    report = benchmark.main(["--source", "video", "--video_root", str(tmp_path / "videos"), "--img_dim", "64",
                             "--batch_size", "2", "--steps", "2", "--warmup", "1", "--workers", "1", "--device",
                             "cpu"])
    assert report["source"] == "video"
    assert report["loader_clips_per_s"] > 0 and report["loader_from_frames_clips_per_s"] > 0
    assert "| loader from frames |" in capsys.readouterr().out


def gpu():
    return torch.device("cuda")


def decoded_on_gpu_and_cpu(records):
    """The first 4 test windows of `records` decoded by --decode gpu (nvJPEG) and by the loader (libjpeg)."""
    encoded = ClipDataset(records, 5, 3, windows=True, encoded=True)
    decoded = ClipDataset(records, 5, 3, windows=True)
    on_gpu, gpu_sizes = clips_to_device(collate_clips([encoded[i] for i in range(4)])[0], None, gpu())
    assert on_gpu.device.type == "cuda"
    on_cpu, cpu_sizes = collate_clips([decoded[i] for i in range(4)])[:2]
    assert torch.equal(gpu_sizes, cpu_sizes)
    return on_gpu.cpu(), on_cpu


def luma(frames: torch.Tensor) -> torch.Tensor:
    red, green, blue = frames.float().unbind(dim=-3)
    return 0.299 * red + 0.587 * green + 0.114 * blue


# extract_frame.py writes 4:2:0 JPEGs (chroma at half resolution). The standard leaves chroma upsampling to the
# decoder: libjpeg interpolates, nvJPEG repeats samples, so at the demo's sharp color edges RGB values differ by up
# to ~110 (on an H200: mean 4.4, max 112; libjpeg with its own repeating upsampler, `djpeg -nosmooth`, against
# torchvision's CPU decode: mean 4.2, max 106). Luma is stored at full resolution, so there decoders agree but for
# inverse-DCT rounding and the clipping of saturated colors (same comparison: luma mean 0.23, 99.9% within 3
# levels; with libjpeg's least accurate inverse DCT 0.61 and 3.2).
@pytest.mark.cuda
def test_gpu_decode_gives_the_cpu_decodes_luma(demo_dataset):
    on_gpu, on_cpu = decoded_on_gpu_and_cpu(read_index(demo_dataset / "csv" / "train_split01.csv"))
    difference = (luma(on_gpu) - luma(on_cpu)).abs().flatten()
    mean, nearly_all = difference.mean().item(), difference.quantile(0.999).item()
    assert mean < 1.0 and nearly_all <= 6, f"luma: mean {mean:.3f}, 99.9th percentile {nearly_all:.1f}"


@pytest.mark.cuda
def test_gpu_decode_matches_cpu_decode_without_chroma_subsampling(demo_dataset, tmp_path):
    """The same frames written 4:4:4: nothing is left to the decoder but the inverse DCT's rounding."""
    records = []
    for record in read_index(demo_dataset / "csv" / "train_split01.csv")[:4]:
        folder = tmp_path / Path(record.folder).name
        folder.mkdir()
        for frame in sorted(Path(record.folder).glob("image_*.jpg")):
            cv2.imwrite(str(folder / frame.name), cv2.imread(str(frame)), [
                cv2.IMWRITE_JPEG_QUALITY, 80, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        records.append(VideoRecord(str(folder), record.num_frames, record.label))
    on_gpu, on_cpu = decoded_on_gpu_and_cpu(records)
    difference = (on_gpu.int() - on_cpu.int()).abs()
    mean, largest = difference.float().mean().item(), difference.max().item()
    assert mean < 1.0 and largest <= 12, f"mean {mean:.3f}, max {largest}"


@pytest.mark.cuda
def test_augmentation_on_gpu_matches_cpu():
    clips = torch.randint(0, 256, (3, 5, 3, 240, 320), dtype=torch.uint8)
    params = sample_params(PRETRAIN, torch.tensor([[240, 320]] * 3), 5, torch.Generator().manual_seed(0))
    on_cpu = apply_params(clips, params, 112, PRETRAIN)
    on_gpu = apply_params(clips.to(gpu()), params, 112, PRETRAIN).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-3)


@pytest.mark.cuda
def test_compiled_augmentation_on_gpu_matches_the_uncompiled_one_on_cpu():
    """--compile's color operations, compiled for the GPU, against the path without --compile, batch by batch from
    the same seed (one compilation, then the same kernels on new draws)."""
    clips = torch.randint(0, 256, (4, 5, 3, 240, 320), dtype=torch.uint8)
    sizes = torch.tensor([[240, 320]] * 4)
    compiled, eager = ClipAugment(PRETRAIN, 112, seed=0, compiled=True), ClipAugment(PRETRAIN, 112, seed=0)
    for _ in range(3):
        assert torch.allclose(compiled(clips.to(gpu()), sizes).cpu(), eager(clips, sizes), atol=1e-3)


@pytest.mark.cuda
def test_bf16_on_gpu_agrees_with_fp32():
    torch.manual_seed(1)
    clips = torch.randn(4, 5, 3, 128, 128, device=gpu())
    model = fresh_model().to(gpu()).eval()
    with torch.no_grad():
        fp32 = pretext_loss(model, clips, gpu(), amp=False)[0]
        bf16 = pretext_loss(model, clips, gpu(), amp=True)[0]
    assert abs(bf16.item() - fp32.item()) / fp32.item() < BF16_TOLERANCE


@pytest.mark.cuda
@pytest.mark.parametrize("attn", ["full", "split"])
def test_preparing_batches_and_training_steps_never_wait_for_the_gpu(attn):
    """Copy, augmentation, training step and metrics queue their GPU work and return. A synchronisation would
    hold the thread preparing batches ahead, or the training loop, until the GPU has caught up."""
    clips = torch.randint(0, 256, (4, 5, 3, 240, 320), dtype=torch.uint8).pin_memory()
    sizes = torch.tensor([[240, 320]] * 4)
    augment = ClipAugment(PRETRAIN, 64, seed=0)  # flips, grayscale and all four jitter operations in 3 batches
    model = FuturePredictor(attn=attn)  # split: an attention mask in every layer
    step_model = prepare_model(model, gpu(), None).train()
    optimizer = adam(model.parameters(), gpu(), lr=1e-3, weight_decay=1e-5)
    metrics = PretextMetrics()

    def one_step():
        inputs = augment(*clips_to_device(clips, sizes, gpu()))
        metrics.update(*train_step(step_model, optimizer, inputs, gpu(), True))

    one_step()  # first use: library handles, the optimizer's state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            one_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metrics.batches == 4 and math.isfinite(metrics.summary()["loss"])


GPU_SLEEP_CYCLES = 2 * 10**9  # about a second at an H100's or H200's clock; preparing a batch takes milliseconds


def queue_gpu_sleep() -> torch.cuda.Event:
    """Keeps the current stream busy for about a second; the returned event completes when it wakes."""
    torch.cuda._sleep(GPU_SLEEP_CYCLES)
    awake = torch.cuda.Event()
    awake.record()
    return awake


@pytest.mark.cuda
@pytest.mark.parametrize("stage", ["pretraining", "pretraining compiled", "test ten-crop"])
def test_preparing_a_batch_returns_while_the_gpu_is_still_busy(stage):
    """Also the waits torch's sync debug mode does not see: the CUDA driver holds the host on a copy from
    pageable memory until the stream has run everything queued before it. With the GPU asleep behind a long
    kernel, preparing a batch (copy, crop, flips, grayscale, all four jitter operations, normalisation) must
    return before it wakes."""
    clips = torch.randint(0, 256, (4, 5, 3, 240, 320), dtype=torch.uint8).pin_memory()
    sizes = torch.tensor([[240, 320]] * 4)
    augment = ClipAugment(PRETRAIN, 64, compiled=stage == "pretraining compiled")

    def prepare() -> torch.Tensor:
        """Whether the batch is finite, as a tensor: the batch's own memory goes back to the cache on return."""
        on_gpu, gpu_sizes = clips_to_device(clips, sizes, gpu())
        inputs = ten_crop(on_gpu, gpu_sizes, 64) if stage == "test ten-crop" else augment(on_gpu, gpu_sizes)
        return torch.isfinite(inputs).all()

    # The first round fills the pinned and device memory caches, as a run's first batches do (a new block may
    # wait for the GPU), and compiles; the second draws the same (reseeded), so it finds a cached block of every
    # size it needs.
    for checked in (False, True):
        augment.reseed(0)
        awake = queue_gpu_sleep()
        finite = prepare()
        if checked:
            assert not awake.query(), f"preparing a {stage} batch waited for the GPU"
        torch.cuda.synchronize()
        assert finite


def without_dropout(model: FuturePredictor) -> FuturePredictor:
    """Eager and compiled code draw different dropout masks; without dropout both must take the same steps."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def relative_difference(values: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    squared = sum(((value - ref).double() ** 2).sum() for value, ref in zip(values, reference))
    return (squared / sum((ref.double() ** 2).sum() for ref in reference)).sqrt().item()


@pytest.mark.cuda
def test_compiled_training_replayed_as_cuda_graphs_takes_the_eager_steps():
    """--compile reduce-overhead runs Inductor's kernels, recorded as a CUDA graph at step 2 and replayed after:
    every step must give the eager loss and gradients of the current weights, and training must learn."""
    torch.manual_seed(1)
    clips = torch.randn(2, 5, 3, 64, 64, device=gpu())
    model = without_dropout(fresh_model())
    step_model = prepare_model(model, gpu(), "reduce-overhead").train()
    optimizer = adam(model.parameters(), gpu(), lr=1e-3, weight_decay=1e-5)
    params = list(model.parameters())
    losses = []
    # TF32 off: eager and compiled convolutions may pick different cuDNN algorithms, whose TF32 rounding differs.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for _ in range(5):
            optimizer.zero_grad(set_to_none=True)
            eager_loss = pretext_loss(model, clips, gpu(), amp=False)[0]
            eager_loss.backward()
            eager_grads = [param.grad.clone() for param in params]
            loss = train_step(step_model, optimizer, clips, gpu(), amp=False)[0].item()
            expected = eager_loss.item()
            assert abs(loss - expected) <= COMPILED_LOSS_TOLERANCE * expected, (loss, expected)
            gradient_difference = relative_difference([param.grad for param in params], eager_grads)
            assert gradient_difference <= COMPILED_GRADIENT_TOLERANCE, gradient_difference
            losses.append(loss)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.cuda
def test_pretraining_and_test_run_on_cuda(demo_dataset, tmp_path):
    common = ["--csv_root", demo_dataset / "csv", "--dataset", "demo", "--img_dim", "128", "--batch_size", "4",
              "--workers", "2", "--device", "cuda", "--decode", "gpu"]
    pretrain = subprocess.run([sys.executable, str(REPO / "CPCTrans" / "main.py"), *map(str, common), "--epochs", "1",
                               "--log_root", str(tmp_path)],
                              capture_output=True, text=True, cwd=tmp_path)
    assert pretrain.returncode == 0, pretrain.stderr
    assert all(setting in pretrain.stdout for setting in ("decode=gpu", "amp=True"))
    checkpoint = next(tmp_path.glob("log_tmp/*/model/epoch1.pth.tar"))
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert all(value.device.type == "cpu" for value in state["state_dict"].values())
    finetune = subprocess.run([sys.executable, str(REPO / "Evaluate" / "test.py"), *map(str, common), "--epochs", "1",
                               "--pretrain", str(checkpoint), "--log_root", str(tmp_path / "ft")],
                              capture_output=True, text=True, cwd=tmp_path)
    assert finetune.returncode == 0, finetune.stderr
    finetuned = next((tmp_path / "ft").glob("log_tmp/*/model/epoch1.pth.tar"))
    tested = subprocess.run([sys.executable, str(REPO / "Evaluate" / "test.py"), "--test", str(finetuned),
                             "--csv_root", str(demo_dataset / "csv"), "--device", "cuda"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "Acc top1:" in tested.stdout and "videos/s on cuda" in tested.stdout
