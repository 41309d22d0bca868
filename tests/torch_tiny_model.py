"""A tiny model and data set for the torch-estimators study, passed by import path
(``--model torch_tiny_model:model --data torch_tiny_model:data``) in the tests."""

import numpy as np
import torch


def model():
    nn = torch.nn
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 2
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 6))).astype(np.float32)
    return x[:400], y[:400], x[400:], y[400:]
