"""The README's example for ``bnbench diagnose``: a small PyTorch CNN trained briefly on
MNIST-1D, the situation behind "model.eval() is much worse than model.train()".

    bnbench diagnose --model bnbench.torch.example:trained_model \\
                     --data bnbench.torch.example:data --out reports/diagnose-example

:func:`trained_model` trains :func:`bnbench.torch.jobs.default_model` for 3 epochs at
batch 512 (SGD, lr 0.4, momentum 0.9, cosine): 21 steps, so running statistics with
PyTorch's momentum 0.1 still remember their initial 0 and 1 when training stops.
"""

import torch

from .jobs import as_tensors, default_data, default_model, loader

EPOCHS, BATCH, LR = 3, 512, 0.4


def data():
    """MNIST-1D as ``(N, 1, 40)`` signals (:func:`bnbench.torch.jobs.default_data`)."""
    return default_data()


def trained_model(seed=0):
    """:func:`bnbench.torch.jobs.default_model` trained on :func:`data` (seeded)."""
    torch.manual_seed(seed)
    model = default_model()
    x, y, _, _ = as_tensors(data())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    steps = EPOCHS * (len(x) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        for xb, yb in loader(x, y, BATCH, g, drop_last=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    return model.eval()
