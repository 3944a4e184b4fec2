"""The supervised stage on N ranks (DDP, as Ray Train runs it on the policy learner's ranks):
each rank trains on every N-th row of a step's batch, and 2 ranks give the weights 1 rank gives."""

import os
import socket

import torch
import torch.multiprocessing as mp

from repirl_ray.learners.sft import sft_train
from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2

STEPS = 3


def _data():
    tok = build_char_tokenizer()
    pairs = [(f"{a}+{b}:", f"{a}+{b}={a + b};#{a + b}") for a in range(1, 9) for b in range(1, 5)]
    prompts = [tok(p).input_ids for p, _ in pairs]
    responses = [tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id] for _, r in pairs]
    return len(tok), prompts, responses


def _train(world: int, rank: int = 0, port: int = 0, out: str = "") -> dict:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    vocab, prompts, responses = _data()
    model = build_tiny_qwen2(vocab, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
    metrics = sft_train(model, prompts, responses, steps=STEPS, batch_size=8, lr=1e-2, seed=0, pad_id=0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if world > 1:
        if rank == 0:
            torch.save({"state": state, "loss": metrics["loss"]}, out)
        torch.distributed.destroy_process_group()
    return {"state": state, "loss": metrics["loss"]}


def _rank(rank, world, port, out):
    _train(world, rank, port, out)


def test_two_ranks_train_like_one(tmp_path):
    one = _train(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank, args=(2, port, out), nprocs=2, join=True)
    two = torch.load(out)
    diffs = {k: (one["state"][k] - two["state"][k]).abs().max().item() for k in one["state"]}
    assert max(diffs.values()) <= 1e-5, diffs
    assert abs(one["loss"] - two["loss"]) <= 1e-5
    before = build_tiny_qwen2(_data()[0], hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
    assert all(not torch.equal(v, one["state"][k]) for k, v in before.state_dict().items() if k != "lm_head.weight")
