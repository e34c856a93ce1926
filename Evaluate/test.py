"""Finetune, linearly probe or test a CPCTrans representation on action classification, or retrieve with it.

    python Evaluate/test.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 \
        --pretrain X.pth.tar --train_what ft --epochs 300 --num_seq 5
    python Evaluate/test.py --net resnet18 --dataset ucf101 --batch_size 16 --img_dim 224 --test finetuned.pth.tar
    python Evaluate/test.py --dataset ucf101 --retrieval X.pth.tar      (nearest-neighbour R@1/5/10/20, and a
                                                                        linear probe on the same frozen features)

The three jobs live in Evaluate/finetune.py, Evaluate/testing.py and Evaluate/retrieval.py.
"""
import argparse

from CPCTrans.encoder import ATTENTION_KINDS, POSITION_KINDS
from CPCTrans.runtime import (REPO_ROOT, add_distributed_flags, add_gru_dropout_flag, add_resize_flag, add_run_flags,
                              add_schedule_flags, add_source_flags, add_speed_flags, check_img_dim, fraction)
from CPCTrans.training import run_command
from Evaluate.classifier import TRAIN_WHAT
from Evaluate.finetune import finetune
from Evaluate.retrieval import retrieve
from Evaluate.testing import test


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPCTrans finetuning / linear probe / testing")
    parser.add_argument("--model", default="lc", choices=["lc"],
                        help="unused; accepted so that the reference's commands run")
    parser.add_argument("--dataset", default=None, help="folder of CSVs under ProcessData/data/ (default ucf101)")
    parser.add_argument("--split", default=None, type=int, choices=[1, 2, 3])
    parser.add_argument("--num_seq", default=None, type=int, help="frames per clip (default 5)")
    parser.add_argument("--pred_step", default=3, type=int, help="unused; accepted so that the reference's commands run")
    parser.add_argument("--ds", default=None, type=int, help="frame stride (default 3)")
    add_schedule_flags(parser, weight_decay=1e-3)
    parser.add_argument("--dropout", default=0.5, type=float, help="dropout before the classifier's linear layer")
    parser.add_argument("--pretrain", default="random", help="pretraining checkpoint, or 'random'")
    parser.add_argument("--test", default="", help="finetuned checkpoint to evaluate")
    parser.add_argument("--ten_crop", action="store_true",
                        help="with --test: average ten views of each window (corners and centre, each also flipped)")
    parser.add_argument("--retrieval", default="",
                        help="pretraining or finetuned checkpoint, or 'random': test videos query training videos "
                             "by their features; prints and saves R@1/5/10/20, and the top-1 of a linear probe fitted "
                             "to the same features")
    parser.add_argument("--train_what", default="ft", choices=TRAIN_WHAT,
                        help="ft: all, encoder at lr/10; all: all at lr; last: linear probe")
    parser.add_argument("--color_jitter", default=None, choices=("on", "off"),
                        help="finetuning's color jitter (the reference's, p=0.3 per clip). Default on, but off for "
                             "--train_what last: a frozen encoder cannot learn to ignore color, so a linear probe "
                             "trains on crops and flips only, as linear evaluations commonly do (docs/results.md)")
    parser.add_argument("--img_dim", default=None, type=int, help="default 128")
    add_resize_flag(parser, None)
    add_source_flags(parser, None, None)
    add_gru_dropout_flag(parser)
    parser.add_argument("--val_fraction", default=None, type=fraction,
                        help="validate finetuning on this fixed random share of the test split's videos (default: "
                             "the reference's 0.3, 0.4 for hmdb51); --test and --retrieval use every video")
    add_run_flags(parser, REPO_ROOT / "Evaluate")
    add_speed_flags(parser)
    parser.add_argument("--attn", default=None, choices=ATTENTION_KINDS,
                        help="for a random init (default full); otherwise taken from the checkpoint")
    parser.add_argument("--pos_enc", default=None, choices=POSITION_KINDS,
                        help="for a random init (default none); otherwise taken from the checkpoint")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)
    check_img_dim(parser, args.img_dim)
    if args.test and args.retrieval:
        parser.error("--test and --retrieval are separate runs; give one of them")
    if args.ten_crop and not args.test:
        parser.error("--ten_crop is a test-time option; use it with --test")
    if args.color_jitter is None:
        args.color_jitter = "off" if args.train_what == "last" else "on"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    run_command(retrieve if args.retrieval else test if args.test else finetune, args)


if __name__ == "__main__":
    main()
