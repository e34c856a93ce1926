"""Shapes and structure of the encoder, the pretraining model and the classifier (docs/method.md)."""
import pytest
import torch

from CPCTrans.backbone import ResNet18Trunk
from CPCTrans.convgru import ConvGRU
from CPCTrans.cpc import FuturePredictor
from CPCTrans.encoder import VideoEncoder
from Evaluate.classifier import VideoClassifier


@pytest.mark.parametrize("img_dim, side", [(128, 4), (196, 7), (224, 7)])
def test_feature_map_size_follows_the_network(img_dim, side):
    encoder = VideoEncoder().eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 2, 3, img_dim, img_dim))
    assert out.shape == (1, 2, 256, side, side)


def test_trunk_has_256_channel_last_stage_without_final_relu():
    trunk = ResNet18Trunk().eval()
    assert [trunk.layer4[i].conv2.out_channels for i in range(2)] == [256, 256]
    with torch.no_grad():
        maps = trunk(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 256, 2, 2)
    assert (maps < 0).any(), "the last block must not end with a ReLU"


def test_transformer_is_prenorm_two_layers_four_heads_with_final_norm():
    transformer = VideoEncoder().transformer
    assert len(transformer.layers) == 2
    layer = transformer.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 4 and layer.linear1.out_features == 2048
    assert isinstance(transformer.norm, torch.nn.LayerNorm)


def test_full_attention_lets_context_see_the_future_and_causal_does_not():
    torch.manual_seed(0)
    clips = torch.randn(1, 4, 3, 64, 64)
    changed_future = clips.clone()
    changed_future[:, 3] = torch.randn(3, 64, 64)
    for attn, first_frames_move in (("full", True), ("causal", False)):
        encoder = VideoEncoder(attn=attn).eval()
        with torch.no_grad():
            difference = (encoder(clips)[:, :3] - encoder(changed_future)[:, :3]).abs().max()
        assert (difference > 1e-4) == first_frames_move, attn


def test_split_attention_keeps_context_and_predicted_frames_apart():
    torch.manual_seed(0)
    clips = torch.randn(1, 5, 3, 64, 64)
    encoder = VideoEncoder(attn="split").eval()
    with torch.no_grad():
        before = encoder(clips, predicted=3)
        new_context, new_target = clips.clone(), clips.clone()
        new_context[:, 0] = torch.randn(3, 64, 64)
        new_target[:, 2] = torch.randn(3, 64, 64)
        after_context, after_target = encoder(new_context, predicted=3), encoder(new_target, predicted=3)
    assert (after_context[:, 1] - before[:, 1]).abs().max() > 1e-4, "context frames attend to earlier ones"
    assert torch.allclose(after_context[:, 2:], before[:, 2:], atol=1e-5), "targets must not see the context"
    assert torch.allclose(after_target[:, [0, 1, 3, 4]], before[:, [0, 1, 3, 4]], atol=1e-5)


def test_without_position_encoding_swapping_frames_swaps_outputs_and_with_it_does_not():
    """No positional encoding + full attention is permutation-equivariant: the reason the reference's
    context cannot tell its predicted steps apart. Either encoding breaks that symmetry."""
    torch.manual_seed(0)
    clips = torch.randn(1, 4, 3, 64, 64)
    swapped = clips[:, [1, 0, 2, 3]]
    for pos_enc, equivariant in (("none", True), ("learned", False), ("sincos", False)):
        encoder = VideoEncoder(pos_enc=pos_enc).eval()
        with torch.no_grad():
            difference = (encoder(clips)[:, [1, 0, 2, 3]] - encoder(swapped)).abs().max()
        assert (difference < 1e-4) == equivariant, pos_enc


def test_learned_position_tables_pass_from_pretraining_to_the_classifier():
    pretrained = FuturePredictor(pos_enc="learned").state_dict()
    classifier = VideoClassifier(num_classes=5, pos_enc="learned")
    assert {"encoder.position.frame", "encoder.position.row", "encoder.position.column"} <= set(pretrained)
    assert set(pretrained) & set(classifier.state_dict()) >= {"encoder.position.frame"}


def test_sincos_positions_are_distinct_for_every_token():
    positions = VideoEncoder(pos_enc="sincos").position(5, 7, 7, torch.device("cpu")).reshape(-1, 256)
    distances = torch.cdist(positions, positions) + torch.eye(len(positions)) * 1e3
    assert distances.min() > 0.1


def test_cpc_predicts_pred_step_maps_and_classifier_gives_logits():
    model = FuturePredictor(num_seq=5, pred_step=3)
    predictions, targets = model(torch.randn(2, 5, 3, 64, 64))
    assert predictions.shape == targets.shape == (2, 3, 256, 2, 2)
    classifier = VideoClassifier(num_classes=7).eval()
    assert classifier(torch.randn(3, 5, 3, 64, 64)).shape == (3, 7)


def test_pred_step_must_leave_context():
    with pytest.raises(ValueError, match="--pred_step"):
        FuturePredictor(num_seq=3, pred_step=3)


def test_classifier_shares_parameter_names_with_pretraining():
    shared = set(FuturePredictor().state_dict()) & set(VideoClassifier(num_classes=5).state_dict())
    assert any(name.startswith("encoder.backbone.") for name in shared)
    assert any(name.startswith("encoder.transformer.") for name in shared)
    assert any(name.startswith("agg.") for name in shared)


def test_linear_probe_trains_only_the_head():
    model = VideoClassifier(num_classes=5)
    groups = model.param_groups("last", lr=1e-3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for group in groups for p in group["params"]}
    assert trainable == {id(p) for m in (model.final_bn, model.final_fc) for p in m.parameters()}


def test_finetune_gives_encoder_a_tenth_of_the_learning_rate():
    model = VideoClassifier(num_classes=5)
    groups = model.param_groups("ft", lr=1e-3)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for group in groups:
        in_encoder = {id(p) in encoder_ids for p in group["params"]}
        assert len(in_encoder) == 1
        assert group["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_attention_and_gru_gates_start_as_separate_orthogonal_matrices():
    """As the reference's separate q, k, v layers and gate convolutions: each block alone is orthogonal, so each
    starts at the reference's scale (one orthogonal 768 x 256 matrix would give rows of norm 1/sqrt(3))."""
    model = FuturePredictor()
    for layer in model.encoder.transformer.layers:
        for block in layer.self_attn.in_proj_weight.detach().chunk(3):
            assert torch.allclose(block @ block.T, torch.eye(256), atol=1e-4)
    for gate in model.agg.gates.weight.detach().flatten(1).chunk(2):
        assert torch.allclose(gate @ gate.T, torch.eye(256), atol=1e-4)


def test_gru_dropout_acts_on_the_hidden_state_after_every_step():
    gru = ConvGRU(4, 64, dropout=0.5).train()
    states = gru(torch.randn(8, 3, 4, 5, 5))
    dropped = (states == 0).float().mean(dim=(0, 2, 3, 4))
    assert ((dropped > 0.4) & (dropped < 0.6)).all(), dropped
    assert (gru.eval()(torch.randn(8, 3, 4, 5, 5)) != 0).all()


def test_pretraining_drops_out_after_every_context_and_prediction_step():
    model = FuturePredictor(num_seq=5, pred_step=3, gru_dropout=0.1).train()
    calls = []
    model.agg.dropout.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    model(torch.randn(2, 5, 3, 64, 64))
    assert len(calls) == 2 + 2, "two context steps, then the state after each prediction that is used"


def test_a_frozen_trunk_keeps_its_batchnorm_statistics_in_pretraining():
    model = FuturePredictor()
    model.train_mode("last")
    assert not model.encoder.backbone.training and model.encoder.transformer.training and model.agg.training
    before = model.encoder.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 5, 3, 64, 64))
    assert torch.equal(model.encoder.backbone.bn1.running_mean, before)
    model.train_mode("all")
    assert model.encoder.backbone.training
