"""Against the reference implementation's own code: its checkpoints load here through the CLIs' loading path and
give the same scores, logits and training loss; its augmentation's channel split and nearest resize match ours."""
import json
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

from CPCTrans import augment
from CPCTrans import main as pretraining
from CPCTrans.checkpoint import load, load_pretrained
from CPCTrans.cpc import FuturePredictor, contrastive_loss, dense_scores
from CPCTrans.reference_checkpoint import convert_state_dict
from Evaluate import test as evaluation
from Evaluate.classifier import VideoClassifier
from reference_oracle import needs_reference
from test_pipeline import SMALL, in_process, only

pytestmark = needs_reference

IMG_DIM, NUM_SEQ, PRED_STEP, CLASSES = 64, 5, 3, 5
IN_FEATURES = 256  # the Transformer's width, over which its LayerNorms normalise
LAYER_NORM_WEIGHT = re.compile(r"transformer\.(layers\.\d+\.norm\d|norm)\.weight$")


def save_reference_checkpoint(model, path, data_parallel: bool) -> None:
    """What the reference's training scripts write: finetuning saves from nn.DataParallel (names `module.*`), and
    best_acc comes out of numpy."""
    state_dict = {("module." if data_parallel else "") + name: value for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save({"epoch": 300, "net": "resnet18", "state_dict": state_dict, "best_acc": np.float64(0.42),
                "optimizer": optimizer.state_dict(), "iteration": 1234}, path)


def clips(batch=2, seed=0):
    return torch.randn(batch, NUM_SEQ, 3, IMG_DIM, IMG_DIM, generator=torch.Generator().manual_seed(seed))


def reference_scores(model, inputs):
    score, _ = model(inputs)
    side = score.shape[0] * score.shape[1] * score.shape[2]
    return score.reshape(side, side)


def relative_error(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max())


def set_dropout(model, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = p


@pytest.fixture
def pretrained_pair(reference, tmp_path):
    """The reference's pretraining model and ours, loaded from its checkpoint as `main.py --pretrain` loads it."""
    torch.manual_seed(0)
    theirs = reference.CPC_Trans(sample_size=IMG_DIM, num_seq=NUM_SEQ, pred_step=PRED_STEP)
    path = tmp_path / "reference_ssl.pth.tar"
    save_reference_checkpoint(theirs, path, data_parallel=False)
    ours = FuturePredictor(num_seq=NUM_SEQ, pred_step=PRED_STEP)
    report = load_pretrained(ours, path)
    assert "not in the checkpoint" not in report, report
    return theirs, ours


def test_pretext_scores_equal_the_references_in_eval_mode(pretrained_pair):
    theirs, ours = pretrained_pair
    with torch.no_grad():
        expected = reference_scores(theirs.eval(), clips())
        got = dense_scores(*ours.eval()(clips()))
    assert relative_error(got, expected) < 1e-4


def test_one_training_step_equals_the_references_without_dropout(pretrained_pair):
    """Train mode (BatchNorm on batch statistics): the same scores, the same loss and the same gradient for every
    weight, the reference's gradients mapped to our layout as its weights are."""
    theirs, ours = pretrained_pair
    for model in (theirs, ours):
        set_dropout(model, 0.0)
        model.train()
    expected = reference_scores(theirs, clips())
    got = dense_scores(*ours(clips()))
    assert relative_error(got.detach(), expected.detach()) < 1e-4
    theirs_loss, our_loss = contrastive_loss(expected), contrastive_loss(got)
    assert our_loss.item() == pytest.approx(theirs_loss.item(), rel=1e-5)
    theirs_loss.backward()
    our_loss.backward()
    their_gradients, _ = convert_state_dict({name: param.grad for name, param in
                                             theirs.named_parameters(remove_duplicate=False)})
    for name, param in ours.named_parameters():
        expected_gradient = their_gradients[name]
        if LAYER_NORM_WEIGHT.search(name):
            # Converted weights are a_2 * c, so their gradient is a_2's divided by c; conversion multiplied it by c.
            expected_gradient = expected_gradient / ((IN_FEATURES - 1) / IN_FEATURES)
        assert relative_error(param.grad, expected_gradient) < 1e-4, name


def test_the_gru_dropout_draws_what_the_references_draws(pretrained_pair):
    """With the same random state the ConvGRU's dropout (after every context and prediction step) drops the same
    units. The Transformer's dropout is off on both sides: torch's attention draws its masks in another order."""
    theirs, ours = pretrained_pair
    for model in (theirs, ours):
        set_dropout(model, 0.0)
        model.train()
    theirs.agg.dropout_layer.p = ours.agg.dropout.p = 0.1
    with torch.no_grad():
        torch.manual_seed(7)
        expected = reference_scores(theirs, clips())
        torch.manual_seed(7)
        got = dense_scores(*ours(clips()))
        torch.manual_seed(8)
        other_draw = dense_scores(*ours(clips()))
    assert relative_error(got, expected) < 1e-4
    assert relative_error(other_draw, expected) > 1e-2, "the dropout is on"


def test_classifier_logits_equal_the_references_from_its_finetuned_checkpoint(reference, tmp_path):
    """In eval mode, and in train mode without dropout."""
    torch.manual_seed(0)
    theirs = reference.LC(sample_size=IMG_DIM, num_seq=NUM_SEQ, num_class=CLASSES)
    path = tmp_path / "reference_finetuned.pth.tar"
    save_reference_checkpoint(theirs, path, data_parallel=True)
    state = load(path, "classifier")
    assert state["model_config"]["num_classes"] == CLASSES and state["best_acc"] == pytest.approx(0.42)
    ours = VideoClassifier(CLASSES)
    ours.load_state_dict(state["state_dict"])
    with torch.no_grad():
        expected = theirs.eval()(clips(batch=3)).view(3, CLASSES)
        got = ours.eval()(clips(batch=3))
    assert relative_error(got, expected) < 1e-4
    for model in (theirs, ours):  # finetuning's train mode: BatchNorm on batch statistics, dropout off
        set_dropout(model, 0.0)
        model.train()
    with torch.no_grad():
        expected = theirs(clips(batch=3)).view(3, CLASSES)
        got = ours(clips(batch=3))
    assert relative_error(got, expected) < 1e-4


def test_reference_checkpoints_pretrain_test_and_retrieve_through_the_clis(reference, demo_dataset, tmp_path,
                                                                             capsys):
    torch.manual_seed(0)
    ssl, finetuned = tmp_path / "reference_ssl.pth.tar", tmp_path / "reference_finetuned.pth.tar"
    save_reference_checkpoint(reference.CPC_Trans(sample_size=IMG_DIM, num_seq=NUM_SEQ, pred_step=PRED_STEP), ssl,
                              data_parallel=False)
    save_reference_checkpoint(reference.LC(sample_size=IMG_DIM, num_seq=NUM_SEQ, num_class=CLASSES), finetuned,
                              data_parallel=True)
    data = ["--csv_root", demo_dataset / "csv", "--workers", 1, "--device", "cpu"]
    runs = {
        "pretraining from it": (pretraining.main, ssl, [*SMALL, *data, "--epochs", 1, "--log_root", tmp_path / "pt",
                                                        "--pretrain", ssl]),
        "finetuning from it": (evaluation.main, ssl, [*SMALL, *data, "--epochs", 1, "--log_root", tmp_path / "ft",
                                                      "--pretrain", ssl]),
        "testing it": (evaluation.main, finetuned, [*data, "--num_seq", NUM_SEQ, "--img_dim", IMG_DIM,
                                                    "--test", finetuned]),
        "retrieval (pretrained)": (evaluation.main, ssl, [*data, "--num_seq", NUM_SEQ, "--img_dim", IMG_DIM,
                                                          "--retrieval", ssl]),
        "retrieval (finetuned)": (evaluation.main, finetuned, [*data, "--num_seq", NUM_SEQ, "--img_dim", IMG_DIM,
                                                               "--retrieval", finetuned]),
    }
    for what, (entry_point, checkpoint, flags) in runs.items():
        result = in_process(entry_point, *flags, capsys=capsys)
        assert result.returncode == 0, (what, result.stderr)
        conversion = only(line for line in result.stdout.splitlines() if "reference implementation" in line)
        assert conversion.startswith(f"{checkpoint}: converted a "), what
        assert "transEnc.attn.linears.0.weight" in conversion and "backbone.fc.weight" in conversion, what
    tested = json.loads(finetuned.with_name(finetuned.name + ".test.json").read_text())
    assert tested["videos_tested"] > 0 and tested["img_dim"] == IMG_DIM


def test_a_reference_checkpoint_tested_without_its_clip_flags_is_refused_in_one_line(reference, demo_dataset,
                                                                                      tmp_path, capsys):
    path = tmp_path / "reference_finetuned.pth.tar"
    save_reference_checkpoint(reference.LC(sample_size=IMG_DIM, num_seq=NUM_SEQ, num_class=CLASSES), path,
                              data_parallel=True)
    result = in_process(evaluation.main, "--test", path, "--csv_root", demo_dataset / "csv", "--num_seq", NUM_SEQ,
                        "--device", "cpu", capsys=capsys)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert str(path) in result.stderr and "give --img_dim" in result.stderr


def real_frame(demo_dataset) -> np.ndarray:
    """A frame as extract_frame.py wrote it (240 px short side), decoded by PIL as the reference's loader does."""
    jpeg = sorted((demo_dataset / "frames").rglob("image_00001.jpg"))[0]
    return np.array(Image.open(jpeg).convert("RGB"))


@pytest.mark.parametrize("img_dim", [128, 196, 112, 64])
def test_nearest_resize_gives_the_references_pixels(reference, demo_dataset, img_dim):
    """The reference crops 224 and scales to img_dim with PIL's NEAREST; ours draws the same box and gives the same
    pixels, every one of them."""
    frame = real_frame(demo_dataset)
    height, width = frame.shape[:2]
    frames = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    for x1, y1 in ((0, 0), (width - 224, height - 224), (37, 11)):
        crop = Image.fromarray(frame).crop((x1, y1, x1 + 224, y1 + 224))
        expected = np.asarray(reference.augmentation.Scale(size=(img_dim, img_dim))([crop])[0])
        box = torch.tensor([[x1, y1, x1 + 224, y1 + 224]], dtype=torch.float32)
        got = augment.crop_resize(frames, box, 1, img_dim)[0].round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected), (img_dim, x1, y1)


def test_grayscale_is_the_references_channel_split_in_distribution(reference):
    """RandomGray(consistent=False, p=0.5): each frame, half the time, becomes one of its channels copied to all
    three, the channel uniform. Ours, over the same frames, gives each outcome as often."""
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30
    count = 6000
    random.seed(0)
    np.random.seed(0)
    pil_frames = reference.augmentation.RandomGray(consistent=False, p=0.5)([Image.fromarray(frame)] * count)
    pixels = np.array([np.asarray(image)[0, 0] for image in pil_frames])  # (frames, RGB)
    theirs = np.where(np.ptp(pixels, axis=1) == 0, pixels[:, 0], 0)
    recipe = augment.Recipe(crop="center", gray_p=0.5, per_frame_color=True, resize="bilinear")  # 8 px: no 224 step
    clip = torch.from_numpy(frame).permute(2, 0, 1)[None, None].expand(1, count, -1, -1, -1)
    params = augment.sample_params(recipe, torch.tensor([[8, 8]]), count, torch.Generator().manual_seed(0))
    frames = augment.denormalize(augment.apply_params(clip, params, 8, recipe))[0]
    pixels = (frames[:, :, 0, 0] * 255).round().byte().numpy()  # (frames, RGB)
    ours = np.where(np.ptp(pixels, axis=1) == 0, pixels[:, 0], 0)
    for outcome in (0, 10, 20, 30):  # unchanged, or red, green or blue copied
        assert (ours == outcome).mean() == pytest.approx((theirs == outcome).mean(), abs=0.03), outcome
    assert (theirs == 0).mean() == pytest.approx(0.5, abs=0.03)
