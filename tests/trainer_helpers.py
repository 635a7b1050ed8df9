"""A tiny BERT classification task built in code (no hub) for Trainer tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def token_dataset(n: int = 64, seed: int = 0, length: int = 12) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (length,), generator=generator)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long),
                     "labels": torch.tensor(int(ids[0] < VOCAB // 2))})
    return rows


def model_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
