#!/usr/bin/env python3
"""Seconds per training epoch of PyKEEN (PyTorch, CPU) on a tab-separated train file, with the
same model, dimension, batch, negatives, loss and optimiser as `soukctl kg eval`. Used by
scripts/bench/kg-epoch.sh for the comparison in BENCHMARKS.md; never a test dependency.

Prints one line per epoch: `pykeen epoch N seconds S triples_per_s T`.
"""
import argparse
import time

import torch
from pykeen.losses import NSSALoss
from pykeen.models import DistMult, RotatE, TransE
from pykeen.training import SLCWATrainingLoop
from pykeen.triples import TriplesFactory

parser = argparse.ArgumentParser()
parser.add_argument("--train", required=True)
parser.add_argument("--model", default="rotate", choices=["rotate", "transe", "distmult"])
parser.add_argument("--dim", type=int, default=500)
parser.add_argument("--batch-size", type=int, default=512)
parser.add_argument("--negatives", type=int, default=256)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--margin", type=float, default=6.0)
parser.add_argument("--adversarial", type=float, default=0.5)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument(
    "--fraction",
    type=float,
    default=1.0,
    help="train on this leading share of the triples (same entities) and scale the time up to a full epoch",
)
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(42)
full = TriplesFactory.from_path(args.train)
tf = full
if args.fraction < 1.0:
    keep = int(full.num_triples * args.fraction)
    tf = TriplesFactory(
        mapped_triples=full.mapped_triples[:keep],
        entity_to_id=full.entity_to_id,
        relation_to_id=full.relation_to_id,
    )
loss = NSSALoss(margin=args.margin, adversarial_temperature=args.adversarial)
kind = {"rotate": RotatE, "transe": TransE, "distmult": DistMult}[args.model]
kwargs = {"scoring_fct_norm": 1} if args.model == "transe" else {}
model = kind(triples_factory=tf, embedding_dim=args.dim, loss=loss, random_seed=42, **kwargs)
optimizer = torch.optim.Adam(model.get_grad_params(), lr=args.lr)
loop = SLCWATrainingLoop(
    model=model,
    triples_factory=tf,
    optimizer=optimizer,
    negative_sampler="basic",
    negative_sampler_kwargs={"num_negs_per_pos": args.negatives},
)
for epoch in range(1, args.epochs + 1):
    started = time.perf_counter()
    losses = loop.train(
        triples_factory=tf,
        num_epochs=1,
        batch_size=args.batch_size,
        use_tqdm=False,
        use_tqdm_batch=False,
    )
    seconds = time.perf_counter() - started
    rate = tf.num_triples / seconds
    print(
        f"pykeen epoch {epoch} ({tf.num_triples} triples) seconds {seconds:.2f} triples_per_s {rate:.0f} "
        f"seconds_per_full_epoch {full.num_triples / rate:.2f} loss {losses[-1]:.4f}",
        flush=True,
    )
